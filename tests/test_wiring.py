# The wiring table generated from a board file.
import json
import os

from tukar_tools import wiring

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(name):
    with open(os.path.join(ROOT, "boards", name, "board.json")) as f:
        return json.load(f)


def test_wiring_table_has_a_row_per_slot_signal():
    md = wiring.markdown(load("tukar-12-wroom"))
    for n in range(1, 13):
        for label in ("door switch", "presence switch", "lock solenoid", "lock feedback", "NTC",
                      "charger enable", "battery SMBus", "battery CAN", "current limit"):
            assert md.count("| slot %d %s |" % (n, label)) == 1


def test_wiring_table_names_expander_pin_and_polarity():
    md = wiring.markdown(load("tukar-12-wroom"))
    assert "| slot 1 door switch | in | MCP23017 #0 (0x20, I2C0) GPA0 | active low |" in md
    assert "| slot 12 charger enable | out | MCP23017 #3 (0x23, I2C0) GPB6 |  |" in md


def test_wiring_table_routes_each_battery_through_its_mux_channel():
    md = wiring.markdown(load("tukar-12-wroom"))
    assert "| slot 10 battery SMBus | I2C | TCA9548A #1 (0x71) channel 1, battery 0x0B |  |" in md


def test_wiring_table_of_the_24_slot_board_shows_can_chargers_and_two_analog_muxes():
    md = wiring.markdown(load("tukar-24-s3"))
    assert "| slot 24 charger | CAN | node 252 |  |" in md
    assert "| slot 24 NTC | analog | CD74HC4067 #1 channel 7 -> GPIO2 (ADC1) |  |" in md
    assert "| cabinet NTC | analog | CD74HC4067 #1 channel 8 -> GPIO2 (ADC1) |  |" in md


def test_wiring_cli_prints_the_table(capsys):
    assert wiring.main([os.path.join(ROOT, "boards", "tukar-24-s3", "board.json")]) == 0
    assert capsys.readouterr().out.startswith("# Wiring of tukar-24-s3 (esp32s3, 24 slots)")


def test_wiring_cli_checks_the_board_file_as_the_device_does(capsys, tmp_path):
    cfg = load("tukar-12-wroom")
    cfg["slots"][3]["lock"] = 40
    bad = tmp_path / "board.json"
    bad.write_text(json.dumps(cfg))
    assert wiring.main([str(bad)]) == 2
    assert "slots[3].lock: pin 40 does not exist on esp32" in capsys.readouterr().err
