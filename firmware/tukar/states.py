# The names the core's modules share, and publish: the cabinet's modes, the swap session's
# phases, the emergency causes and alarms (bits), and the journal's sections (bits).
IN_SERVICE = "in_service"
MAINTENANCE = "maintenance"
OUT_OF_SERVICE = "out_of_service"
EMERGENCY = "emergency"
SETTABLE_MODES = (IN_SERVICE, MAINTENANCE, OUT_OF_SERVICE)

# Session phases (cabinet state `session.phase`).
S_AWAITING = "awaiting_battery"
S_IDENTIFYING = "identifying"
S_REJECTED = "rejected"
S_DISPENSING = "dispensing"

# Emergency causes (latched) and the other alarms, as bits; names as published.
C_SMOKE = 1
C_ESTOP = 2
C_OVERTEMP = 4
A_CABINET_OVERTEMP = 8
A_DOOR_FORCED = 16
A_CABINET_SENSOR = 32
ALARMS = ("smoke", "estop", "overtemp", "cabinet_overtemp", "door_forced", "cabinet_sensor")

# Journal sections that changed since the shell last persisted.
J_INVENTORY = 1
J_SESSION = 2
J_COUNTERS = 4
J_CONFIG = 8
J_MODE = 16

JOURNAL_VERSION = 1
IO_FAULT_MS = 500  # switches unreadable this long: slot fault `slot_io` (shorter: a glitch)
ENERGY_EVERY = 10  # telemetry carries the energy counters in one message of this many
