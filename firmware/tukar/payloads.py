# What the cabinet publishes, worked out from the core's state: which slot states changed since
# the last tick (and whether the cabinet's did), and the payloads of P/C/state, P/C/slot/N/state
# and P/C/telemetry (mqtt.md). Core derives from Payloads (`self` is the Core).
# pyright: reportAttributeAccessIssue=false, reportOptionalMemberAccess=false
from tukar import slot as sl
from tukar.states import (A_CABINET_OVERTEMP, A_CABINET_SENSOR, A_DOOR_FORCED, ALARMS, EMERGENCY,
                          ENERGY_EVERY)


class Payloads:
    # == state to publish ==================================================================
    def _publishable(self, now, k):
        """The evaluated slots' published states, the cabinet's counts (kept per slot, so a tick
        that evaluates one slot does not count them all), alarms, fan and outputs."""
        lim = self.lim
        ev = self._ev
        c = self.counts
        moved = False  # a count moved
        outs = self.outputs
        lock_cmd = self.lock_cmd
        lock_pulse = self.lock_pulse
        led = self.ledger
        tally = 6 * self.n_slots - 1  # the ledger's run of each slot's share of the counts
        for j in range(k):
            s = ev[j]
            s.check_dispensable(now, lim)
            st = s.derive_state()
            inp = s.inp
            # booleans and fault bits, one int (Slot.pub_io; the BMS's from bit 9)
            io = (inp.door_closed * 4 + inp.locked * 2 + s.dispensable | s.faults << 3
                  | inp.bms.faults << 9)
            if st != s.state or io != s.pub_io or s.charge_ma != s.pub_ma or s.reason != s.pub_reason:
                s.state = st
                s.pub_io = io
                s.pub_ma = s.charge_ma
                s.pub_reason = s.reason
                self.dirty |= 1 << s.n
            t = 0
            if s.dispensable:
                t = 1
            if st == sl.EMPTY:
                t |= 2
            elif st == sl.FAULT:
                t |= 8
            if s.charge_ma:
                t |= 4
            if s.forced:
                t |= 16
            was = led[tally + s.n]
            if t != was:
                led[tally + s.n] = t
                d = t ^ was
                for i in range(5):
                    if d & (1 << i):
                        c[i] += 1 if t & (1 << i) else -1
                        if i < 4:  # counts[4] (doors forced) is not published
                            moved = True
            n = s.n - 1
            if lock_cmd[n] != s.lock_cmd or lock_pulse[n] != s.lock_pulse:
                lock_cmd[n] = s.lock_cmd
                lock_pulse[n] = s.lock_pulse
                outs |= 1 << s.n
        if moved:
            self.dirty |= 1
        forced = c[4] > 0
        cab = self.cabinet.temp_dc
        alarms = self.causes
        if self.cab_sensor:
            alarms |= A_CABINET_SENSOR
            cab = 1000  # unknown: the fan runs
        elif cab > lim.cabinet_max_dc:
            alarms |= A_CABINET_OVERTEMP
        if forced:
            alarms |= A_DOOR_FORCED
        if alarms != self.alarms:
            self.alarms = alarms
            self.dirty |= 1
        em = self.mode == EMERGENCY
        alarm = em or forced
        fan = em or c[2] > 0 or cab >= 400
        if alarm != self.alarm or fan != self.fan:
            self.alarm = alarm
            self.fan = fan
            outs |= 1
        self.outputs = outs

    def take_outputs(self):
        """The outputs changed since the last call: bit 0 fan and alarm, bit n slot n's charger
        and lock (the shell drives only those; all of them after a boot)."""
        o = self.outputs
        self.outputs = 0
        return o

    # == payloads ==========================================================================
    def cabinet_state(self):
        return {"mode": self.mode, "ready": self.counts[0], "empty": self.counts[1],
                "charging": self.counts[2], "faulted": self.counts[3],
                "session": self.session.view() if self.session else None,
                "temp_c": None if self.cab_sensor else self.cabinet.temp_dc / 10,
                "alarms": [ALARMS[i] for i in range(len(ALARMS)) if self.alarms & (1 << i)]}

    def slot_state(self, n):
        s = self.slots[n - 1]
        inp = s.inp
        return {"slot": n, "state": s.state, "door": "closed" if inp.door_closed else "open",
                "lock": "locked" if inp.locked else "unlocked",
                "battery": s.battery_view(),
                "charger": {"on": s.charge_ma > 0, "current_a": s.charge_ma / 1000},
                "dispensable": s.dispensable, "faults": sl.fault_list(s.faults),
                "reason": (s.reason if s.state == sl.PAUSED
                           else s.quarantine if s.state == sl.QUARANTINED else None)}

    def telemetry(self):
        """Measurements of every occupied slot as columns aligned with `slots` (one list per
        quantity: the keys are written once, not once per slot), rounded to 0.1; null while a
        battery's BMS cannot be read. Then the cabinet's clock, its ready and empty counts; in the
        first after a boot and every ENERGY_EVERY-th, the energy each slot has drawn since
        commissioning and their total, in whole Wh (counters: a report needs their rise over
        hours, not a minute's; every minute they would cost the cellular budget 100 KB a day).
        The shell adds heap_free, uptime_s and rssi."""

        def tenth(milli):  # 51234 mV -> 51.2; a whole number goes out as an int ("0", not "0.0")
            q = (milli + 50) // 100
            return q // 10 if q % 10 == 0 else q / 10

        slots, soc, temp, volt, amps = [], [], [], [], []
        for s in self.slots:
            if s.inp.present:
                b = s.inp.bms
                slots.append(s.n)
                soc.append(tenth(b.soc_pm * 100) if b.valid else None)
                temp.append(tenth(b.temp_dc * 100) if b.valid else None)
                volt.append(tenth(b.voltage_mv) if b.valid else None)
                amps.append(tenth(b.current_ma) if b.valid else None)
        t = {"slots": slots, "soc": soc, "temp_c": temp, "voltage_v": volt, "current_a": amps,
             "cabinet_temp_c": None if self.cab_sensor else tenth(self.cabinet.temp_dc * 100),
             "ts": self.wall, "ready": self.counts[0], "empty": self.counts[1]}
        n = self._tel & 15
        self._tel += 1 if n < ENERGY_EVERY - 1 else -n
        if n == 0:
            t["energy_wh"], t["energy_wh_total"] = self.energy_columns()
        return t
