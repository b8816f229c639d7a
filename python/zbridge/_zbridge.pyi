"""The native half of zbridge (Rust, over zbridge-client). Use the classes
of the ``zbridge`` package; these are its building blocks."""
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

__version__: str

_Frame = Union[bytes, bytearray, memoryview, str]

class Call:
    """A call in flight."""

    def result(self, timeout: Optional[float] = None) -> List[bytes]:
        """The reply frames, waiting up to ``timeout`` seconds (``None``: until
        the client's own deadlines end the call); raises the call's error, or
        ``Timeout`` past ``timeout`` (the call goes on: ask again)."""
    def done(self) -> bool:
        """Whether the result is in."""
    @property
    def attempts(self) -> Optional[int]:
        """Sends it took (more than 1 after a failover); ``None`` until answered."""
    @property
    def endpoint(self) -> Optional[str]:
        """The bridge that answered; ``None`` until answered."""
    @property
    def elapsed(self) -> Optional[float]:
        """Seconds from the call to its answer; ``None`` until answered."""

class Events:
    """The client's events, in order."""

    def get(self, timeout: Optional[float] = None) -> Optional[Any]:
        """The next event within ``timeout`` seconds (``None``: wait for one);
        ``None`` when none came; ``StopIteration`` once the client is closed."""
    def __iter__(self) -> "Events": ...
    def __next__(self) -> Any: ...

class Driver:
    """The asyncio completion hook of one event loop."""

    def submit(
        self, future: Any, target: Optional[str], frames: Tuple[_Frame, ...], timeout: Optional[float] = None
    ) -> Optional[float]:
        """Send a call whose result completes ``future``; the seconds of its
        timer (``None``: none). A NaN or negative ``timeout`` raises
        ``ValueError`` before anything is sent."""
    def drain(self) -> None:
        """Complete the futures of the calls whose results came."""

class Subscription:
    def recv(self, timeout: Optional[float] = None) -> Optional[List[Any]]:
        """What came within ``timeout`` (a list, maybe empty); ``None`` once closed."""
    def close(self) -> None: ...

class Core:
    def __init__(self, settings: Dict[str, Any], auth_token: Optional[str] = None) -> None: ...
    @staticmethod
    def from_file(path: str) -> "Core": ...
    def send(self, target: Optional[str], frames: Tuple[_Frame, ...]) -> Call: ...
    def request(
        self, target: Optional[str], frames: Tuple[_Frame, ...], timeout: Optional[float] = None
    ) -> List[bytes]: ...
    def events(self) -> Events: ...
    def subscribe(self, stream: Optional[str], prefixes: Sequence[bytes]) -> Subscription: ...
    def driver(self) -> Tuple[Driver, int]:
        """A driver and its doorbell's read end (a descriptor the caller owns)."""
    def close(self) -> None: ...
    @property
    def closed(self) -> bool: ...
    @property
    def settings(self) -> Dict[str, Any]: ...
