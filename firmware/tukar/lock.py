# A slot's fail-secure electric lock: energising the output pulls the bolt in (open), so an
# unpowered or reset controller leaves the door locked. The feedback switch reports the bolt.
# Timing (500 ms, one retry, jam) is the core's business; this driver drives and reads.
# Pins are (bank, bit) of tukar.pins (an expander or the GPIOs), logical: 1 means energised /
# bolt out, whatever the wiring polarity. The feedback is read as the bank last latched it.


class Lock:
    def __init__(self, out, feedback):
        self._ox, self._ob = out
        self._fx, self._fb = feedback
        self.cmd_locked = True
        self._pulse = None  # last retry counter seen; None until the first command

    def lock(self):
        """Release the solenoid: the bolt springs out. Used by safe_outputs (rule 9)."""
        self.cmd_locked = True
        self._ox.put(self._ob, 0)

    def command(self, locked, pulse):
        """Drive the lock; a new `pulse` re-issues the command (the core's retry).

        Re-issuing an unlock drops the solenoid for this call so that the next call pulls it in
        afresh (one control tick, at least 50 ms off); re-issuing a lock needs no output change.
        Returns True when such a next call is due.
        """
        retry = self._pulse is not None and pulse != self._pulse
        self._pulse = pulse
        self.cmd_locked = locked
        self._ox.put(self._ob, 0 if locked or retry else 1)
        return retry and not locked  # the solenoid waits for the next call to pull in again

    def locked(self):
        """The feedback switch says the bolt is out."""
        return self._fx.state >> self._fb & 1 == 1
