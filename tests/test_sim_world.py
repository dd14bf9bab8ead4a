"""sim/world follows what an observer needs: a bolt that moves or a charger that switches is
published at once (tests compare the world with the cabinet's retained states right after a
swap), while SoC and temperatures drift in at most every WORLD_PUBLISH_MS."""
import random

from tukar_tools import sim as simmod


def cabinet(tmp_path, mocker, fill=0):
    cab = simmod.SimCabinet(None, "w1", 12, str(tmp_path), fill, random.Random(1))
    cab.control = mocker.Mock()
    cab.physics(0)  # first publication
    cab.control.publish_world.reset_mock()
    return cab


def energise(cab, mocker, on):
    """Every output of the board at `on` (1 = solenoids pulled, chargers enabled)."""
    mocker.patch.object(cab.phys.world, "output", return_value=on)


def test_quiet_world_is_published_only_every_period(tmp_path, mocker):
    cab = cabinet(tmp_path, mocker)
    for t in range(10, simmod.WORLD_PUBLISH_MS, 10):
        cab.physics(t)
    assert cab.control.publish_world.call_count == 0
    cab.physics(simmod.WORLD_PUBLISH_MS)
    assert cab.control.publish_world.call_count == 1


def test_a_bolt_that_moves_is_published_at_once(tmp_path, mocker):
    cab = cabinet(tmp_path, mocker)
    energise(cab, mocker, 1)
    cab.physics(100)  # bolts start travelling (300 ms)
    assert cab.control.publish_world.call_count == 0
    cab.physics(400)
    assert cab.control.publish_world.call_count == 1
    assert not cab.phys.locks[0].locked
    energise(cab, mocker, 0)
    cab.physics(500)
    cab.physics(800)  # bolts back out, still well inside the period
    assert cab.control.publish_world.call_count == 2
    assert cab.phys.locks[0].locked


def test_a_charger_that_switches_is_published_at_once(tmp_path, mocker):
    cab = cabinet(tmp_path, mocker, fill=1)
    cab.phys.locks[0].jammed = True  # only the charger may cause a publication here
    cab.physics(10)
    assert cab.control.publish_world.call_count == 0
    mocker.patch.object(cab.phys, "charger_ma", return_value=2000)
    cab.physics(20)
    assert cab.control.publish_world.call_count == 1
    cab.physics(30)  # still charging: nothing new
    assert cab.control.publish_world.call_count == 1
    mocker.patch.object(cab.phys, "charger_ma", return_value=0)
    cab.physics(40)
    assert cab.control.publish_world.call_count == 2
