"""Session plumbing for the whole suite."""

from __future__ import annotations

# Modules whose tests build on one host, in order (tests/test_real_systemd.py boots one container
# and runs its nights one after the other): each goes to a single xdist worker as a whole.
ONE_WORKER_MODULES = frozenset({"tests/test_real_systemd.py"})


def pytest_xdist_make_scheduler(config, log):  # noqa: ANN001, ANN201 (xdist's hook)
    """`--dist loadgroup`, done here: every test on its own like `load`, except ONE_WORKER_MODULES.

    xdist 3.8 implements loadgroup by rewriting `item._nodeid`, which pytest 9.2 no longer reads
    (Node.nodeid is `str(self._id)`): the xdist_group mark was ignored and the real-systemd tier's
    tests were spread over workers (checked with -v). This scheduler groups by module path instead.
    """
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class OneWorkerPerModule(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return module if module in ONE_WORKER_MODULES else nodeid

    return OneWorkerPerModule(config, log)
