# Runs before main.py at every boot. Deliberately empty: anything here would run before the
# cabinet's outputs are made safe (rule 9), and an error here would keep main.py from running.
