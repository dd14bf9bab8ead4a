# Error codes of the MQTT contract (mqtt.md, "Ack"): the only values an ack's `error` may take.
BAD_JSON = "bad_json"
BAD_SIGNATURE = "bad_signature"
STALE = "stale"
UNKNOWN_CMD = "unknown_cmd"
BAD_ARGS = "bad_args"
BUSY = "busy"
WRONG_MODE = "wrong_mode"
NOT_IN_SERVICE = "not_in_service"
NO_BATTERY_AVAILABLE = "no_battery_available"
NO_EMPTY_SLOT = "no_empty_slot"
SLOT_RANGE = "slot_range"
EMERGENCY = "emergency"
RATE_LIMITED = "rate_limited"
NOT_ALLOWED = "not_allowed"
# Refusals of the `ota` command (docs/ota.md), additions to the contract's list.
WRONG_TARGET = "wrong_target"
IMAGE_TOO_LARGE = "image_too_large"
NOT_NEWER = "not_newer"

ALL = (
    BAD_JSON, BAD_SIGNATURE, STALE, UNKNOWN_CMD, BAD_ARGS, BUSY, WRONG_MODE,
    NOT_IN_SERVICE, NO_BATTERY_AVAILABLE, NO_EMPTY_SLOT, SLOT_RANGE, EMERGENCY,
    RATE_LIMITED, NOT_ALLOWED, WRONG_TARGET, IMAGE_TOO_LARGE, NOT_NEWER,
)


def make_ack(req_id, error=None, detail="", result=None):
    """An ack with exactly the contract's keys; result keys are added but never replace them."""
    ack = {}
    if result:
        for k in result:
            ack[k] = result[k]
    ack["req_id"] = req_id
    ack["ok"] = error is None
    ack["error"] = error
    ack["detail"] = detail
    return ack
