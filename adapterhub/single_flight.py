"""Concurrent calls for one key share one run of the work: the first caller does it, the others wait
for its result (or its error). A server whose adapter was unloaded gets its next requests for it all
at once; without this each would read and check the same safetensors file, on the same cores.
"""
from __future__ import annotations

import threading
from concurrent.futures import Future


class SingleFlight:
    def __init__(self):
        self._lock = threading.Lock()
        self._running: dict[object, Future] = {}

    def run(self, key, work):
        """work() once for every caller that asks for `key` while it runs -> its result; its error, raised
        in each of them. A caller that comes after it ended runs it again."""
        with self._lock:
            shared = self._running.get(key)
            if shared is None:
                mine = self._running[key] = Future()
        if shared is not None:
            return shared.result()
        try:
            result = work()
        except BaseException as e:
            mine.set_exception(e)
            raise
        else:
            mine.set_result(result)   # before the key goes: a waiter never holds a future nobody will set
            return result
        finally:
            with self._lock:
                del self._running[key]
