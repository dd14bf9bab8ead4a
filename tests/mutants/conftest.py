"""What the tests written against mutation survivors share."""
import pytest
from coreworld import Rig

from tukar_tools import schemas


@pytest.fixture
def every_event_and_state_fits_the_contract(monkeypatch):
    """After each test: every event its cabinets emitted, and their states, fit mqtt.md's schemas
    (which kills mutants that rename a key or a value). A file takes it with
    `pytestmark = pytest.mark.usefixtures("every_event_and_state_fits_the_contract")`."""
    rigs = []
    real = Rig.__init__

    def init(self, *a, **k):
        real(self, *a, **k)
        rigs.append(self)
    monkeypatch.setattr(Rig, "__init__", init)
    yield
    for rig in rigs:
        for e in rig.events:
            schemas.validate("event", dict(e, seq=1))
        schemas.validate("state", dict(rig.core.cabinet_state(), seq=1))
        for n in range(1, rig.core.n_slots + 1):
            schemas.validate("slot/%d/state" % n, dict(rig.core.slot_state(n), seq=1))
