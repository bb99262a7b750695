"""Count the enum parses (`Choice.parse`, every one in the package) and full argument checks (`ops._check`) that
run while a test exercises attention: the measure of "the QK step checks once, at the public entry"."""
from typing import Callable, Dict

import qknorm.ops as ops
from qknorm.choice import Choice


def count_parses_and_checks(set_attr: Callable[[object, str, object], None] = setattr) -> Dict[str, int]:
    """Wrap both with counters and return the live counts {"parse": n, "check": n}. `set_attr` installs the
    wrappers: `monkeypatch.setattr` in a test process (undone after the test), plain `setattr` in a forked rank."""
    counts = {"parse": 0, "check": 0}
    parse, check = Choice.parse.__func__, ops._check

    def counting_parse(cls, field, value):
        counts["parse"] += 1
        return parse(cls, field, value)

    def counting_check(*args, **kw):
        counts["check"] += 1
        return check(*args, **kw)

    set_attr(Choice, "parse", classmethod(counting_parse))
    set_attr(ops, "_check", counting_check)
    return counts
