# What the cabinet publishes, worked out from the core's state: which slot states changed since
# the last tick (and whether the cabinet's did), and the payloads of P/C/state, P/C/slot/N/state
# and P/C/telemetry (mqtt.md). Core derives from Payloads (`self` is the Core).
# pyright: reportAttributeAccessIssue=false, reportOptionalMemberAccess=false
from tukar import slot as sl
from tukar.states import A_CABINET_OVERTEMP, A_DOOR_FORCED, ALARMS, EMERGENCY


class Payloads:
    # == state to publish ==================================================================
    def _publishable(self, now):
        ready = empty = charging = faulted = 0
        forced = False
        lim = self.lim
        for s in self.slots:
            s.check_dispensable(now, lim)
            st = s.derive_state()
            inp = s.inp
            if (st != s.state or inp.door_closed != s.pub_door or inp.locked != s.pub_locked
                    or s.charge_ma != s.pub_ma or s.dispensable != s.pub_disp
                    or s.faults != s.pub_faults or inp.bms.faults != s.pub_bfaults
                    or s.reason != s.pub_reason):
                s.state = st
                s.pub_door = inp.door_closed
                s.pub_locked = inp.locked
                s.pub_ma = s.charge_ma
                s.pub_disp = s.dispensable
                s.pub_faults = s.faults
                s.pub_bfaults = inp.bms.faults
                s.pub_reason = s.reason
                self.dirty |= 1 << s.n
            if s.dispensable:
                ready += 1
            if st == sl.EMPTY:
                empty += 1
            elif st == sl.FAULT:
                faulted += 1
            if s.charge_ma:
                charging += 1
            if s.forced:
                forced = True
            n = s.n - 1
            self.lock_cmd[n] = s.lock_cmd
            self.lock_pulse[n] = s.lock_pulse
        c = self.counts
        if c[0] != ready or c[1] != empty or c[2] != charging or c[3] != faulted:
            c[0] = ready
            c[1] = empty
            c[2] = charging
            c[3] = faulted
            self.dirty |= 1
        alarms = self.causes
        if self.cabinet.temp_dc > lim.cabinet_max_dc:
            alarms |= A_CABINET_OVERTEMP
        if forced:
            alarms |= A_DOOR_FORCED
        if alarms != self.alarms:
            self.alarms = alarms
            self.dirty |= 1
        em = self.mode == EMERGENCY
        self.alarm = em or forced
        self.fan = em or charging > 0 or self.cabinet.temp_dc >= 400

    # == payloads ==========================================================================
    def cabinet_state(self):
        return {"mode": self.mode, "ready": self.counts[0], "empty": self.counts[1],
                "charging": self.counts[2], "faulted": self.counts[3],
                "session": self.session.view() if self.session else None,
                "temp_c": self.cabinet.temp_dc / 10,
                "alarms": [ALARMS[i] for i in range(len(ALARMS)) if self.alarms & (1 << i)]}

    def slot_state(self, n):
        s = self.slots[n - 1]
        inp = s.inp
        return {"slot": n, "state": s.state, "door": "closed" if inp.door_closed else "open",
                "lock": "locked" if inp.locked else "unlocked",
                "battery": s.battery_view(),
                "charger": {"on": s.charge_ma > 0, "current_a": s.charge_ma / 1000},
                "dispensable": s.dispensable, "faults": sl.fault_list(s.faults),
                "reason": s.reason if s.state == sl.PAUSED else None}

    def telemetry(self):
        """Measurements of every occupied slot as columns aligned with `slots` (one list per
        quantity: the keys are written once, not once per slot), rounded to 0.1; null while a
        battery's BMS cannot be read. The shell adds heap_free, uptime_s and rssi."""

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
        return {"slots": slots, "soc": soc, "temp_c": temp, "voltage_v": volt, "current_a": amps,
                "cabinet_temp_c": tenth(self.cabinet.temp_dc * 100)}
