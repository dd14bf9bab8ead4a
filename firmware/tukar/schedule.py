# Which slots a tick evaluates (docs/core.md, the schedule): the mask the shell gives, the slots
# watched every tick, the slots whose timer has ended, and each slot's turn to have its BMS age
# looked at. Core derives from Schedule (`self` is the Core).
# pyright: reportAttributeAccessIssue=false, reportOptionalMemberAccess=false
from micropython import const

from tukar import config as cf
from tukar import slot as sl
from tukar.clock import wrap_add, wrap_diff
from tukar.states import IO_FAULT_MS, S_AWAITING, S_DISPENSING, S_REJECTED

_TICKS_MAX = const((1 << 30) - 1)  # tukar.clock.TICKS_MAX
_TICKS_HALF = const(1 << 29)


def _earlier(a, b):
    """The earlier of two tick times (a may be None)."""
    return b if a is None or wrap_diff(b, a) < 0 else a


class Schedule:
    def due(self, i, now):
        """Slot index i must be evaluated for time alone (the shell asks at the slot's turn): its
        BMS reading has just gone stale, or become fresh, or has been silent past bms_lost_ms."""
        s = self.slots[i]
        b = s.inp.bms
        if not b.valid:
            return False
        age = ((now - b.t_ms + _TICKS_HALF) & _TICKS_MAX) - _TICKS_HALF  # wrap_diff, inline
        if s.fresh:
            return age >= self.lim.fresh_ms
        if not b.link_fault and age < self.lim.fresh_ms:
            return True
        return (s.phase == sl.P_STORED and not s.faults & sl.BMS_LINK and s.inp.present
                and age >= self.lim.lost_ms)

    def _gather(self, mask):
        """The slots of `mask` into self._ev (allocated once); returns how many."""
        ev = self._ev
        bits = self._bit_slot
        k = 0
        m = mask & ~1
        while m:
            low = m & -m
            m ^= low
            ev[k] = bits[low]
            k += 1
        return k

    def _observe(self, now, k):
        fresh = self.lim.fresh_ms
        ev = self._ev
        for j in range(k):
            ev[j].observe(now, fresh)

    def _schedule(self, k):
        """When the evaluated slots must be looked at again without news: every tick while a
        lock moves (rule 8 counts to the tick) or a battery is being identified, at a timer's end
        (a session's time-outs, a sensor mismatch or a switch fault lasting), else at their next
        news (the shell's mask)."""
        w = self.watch
        timed = self.timed
        ev = self._ev
        ss = self.session
        for j in range(k):
            s = ev[j]
            b = 1 << s.n
            inp = s.inp
            ph = s.phase
            if (s.lock_pending or inp.locked != s.lock_cmd or ph == sl.P_IDENTIFYING
                    or (ph == sl.P_EMPTY and inp.present)):
                # A lock in motion, or a battery waiting for its first reading since the door
                # shut (a reading that repeats the last values is news here, and is not flagged).
                w |= b
                timed &= ~b
                continue
            w &= ~b
            if (s.io_bad_since is None and s.mismatch_since is None
                    and (ss is None or s.n != ss.slot_in and s.n != ss.slot_out)):
                timed &= ~b  # no timer can be running
                continue
            t = self._wake(s, ss)
            if t is None:
                timed &= ~b
            else:
                s.wake = t
                timed |= b
        self.watch = w
        self.timed = timed

    def _wake(self, s, ss):
        """The earliest time a timer of slot s ends (ticks), or None."""
        t = None
        if s.io_bad_since is not None and not s.faults & sl.SLOT_IO:
            t = wrap_add(s.io_bad_since, IO_FAULT_MS)
        if s.mismatch_since is not None:
            t = _earlier(t, wrap_add(s.mismatch_since, cf.SENSOR_MISMATCH_MS))
        if ss is not None and (s.n == ss.slot_in or s.n == ss.slot_out):
            ph = ss.phase
            if ph == S_AWAITING:
                t = _earlier(t, wrap_add(ss.t_phase, self.lim.insert_ms))
            elif ph == S_REJECTED or ph == S_DISPENSING:
                t = _earlier(t, wrap_add(ss.t_phase, self.lim.take_ms))
        return t

    def _timers_due(self, now):
        """The slots (a mask) whose timer has ended."""
        due = 0
        m = self.timed
        bits = self._bit_slot
        while m:
            low = m & -m
            m ^= low
            if (now - bits[low].wake) & _TICKS_MAX < _TICKS_HALF:  # wrap_diff(now, wake) >= 0
                due |= low
        return due
