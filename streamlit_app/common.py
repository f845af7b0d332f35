"""What every page shares: the settings, the store, the password gate and the refresh interval."""

from __future__ import annotations

import hmac
import threading
import time
from collections.abc import Callable

import streamlit as st

from appliance.errors import ApplianceError
from appliance.settings import Settings
from appliance.store import Store
from streamlit_app import shaping

REFRESH_SECONDS = 5.0
_local = threading.local()


def settings() -> Settings:
    """The appliance's settings (``APPLIANCE_*`` variables / ``APPLIANCE_CONFIG``; cheap to read on every run)."""
    return Settings.from_env()


def open_store() -> Store | None:
    """The store of this session's thread (SQLite connections are not shared between threads), or None when the
    appliance has not created its store yet. The page never creates the store file."""
    path = settings().store_path
    if not path.is_file():
        return None
    stores = getattr(_local, "stores", None)
    if stores is None:
        stores = _local.stores = {}
    if path not in stores:
        stores[path] = Store(path)
    return stores[path]


def password_matches(entered: str, password: str) -> bool:
    """Constant-time comparison of the entered password with the configured one."""
    return hmac.compare_digest(entered.encode("utf-8"), password.encode("utf-8"))


def password_required() -> bool:
    return bool(settings().page_password)


def authenticated() -> bool:
    return not password_required() or bool(st.session_state.get("authenticated"))


class LoginThrottle:
    """Slows down password guessing, per client address, for every session of the page process: after
    ``free_failures`` wrong passwords within ``window`` seconds, each try waits twice as long as the one before
    (``first_wait``, twice that, … at most ``max_wait``), the right password included."""

    def __init__(
        self, *, free_failures: int = 5, window: float = 900.0, first_wait: float = 2.0, max_wait: float = 300.0
    ):
        self.free_failures, self.window, self.first_wait, self.max_wait = free_failures, window, first_wait, max_wait
        self._failures: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def wait_seconds(self, client: str, now: float) -> float:
        """How long ``client`` must wait before its next try (0: it may try now)."""
        with self._lock:
            recent = [t for t in self._failures.get(client, []) if now - t < self.window]
            self._failures[client] = recent
        extra = len(recent) - self.free_failures
        if extra < 0:
            return 0.0
        return max(0.0, recent[-1] + min(self.first_wait * 2.0**extra, self.max_wait) - now)

    def failed(self, client: str, now: float) -> None:
        with self._lock:
            self._failures.setdefault(client, []).append(now)

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._failures.pop(client, None)


_throttle = LoginThrottle()


def _client() -> str:
    """The client's address (Streamlit gives none for loopback connections: those share one count)."""
    try:
        address = st.context.ip_address
    except Exception:  # no client context (the page run bare)
        address = None
    return address if isinstance(address, str) and address else "local"


def login_page() -> None:
    """The only page shown until the password is given. The password goes through a form (never a URL), and
    neither it nor a failed attempt is logged."""
    st.title("Microscope AutoML appliance")
    st.write("This status page is protected. Enter the page password (`APPLIANCE_PAGE_PASSWORD`).")
    with st.form("login", clear_on_submit=True):
        entered = st.text_input("Password", type="password", key="login_password")
        submitted = st.form_submit_button("Log in")
    if submitted:
        client, now = _client(), time.monotonic()
        wait = _throttle.wait_seconds(client, now)
        if wait > 0:
            st.error(f"Too many wrong passwords; try again in {wait:.0f} s.")
        elif password_matches(entered, settings().page_password):
            _throttle.succeeded(client)
            st.session_state["authenticated"] = True
            st.session_state.pop("login_password", None)
            st.rerun()
        else:
            _throttle.failed(client, now)
            st.error("Wrong password.")


def require_login() -> None:
    """Stop the script unless the session has logged in (a second lock behind the navigation's)."""
    if not authenticated():
        st.warning("Log in first.")
        st.stop()


def auto_refresh() -> float | None:
    """The refresh interval of the live parts of a page (None: the user switched it off in the sidebar)."""
    on = st.sidebar.toggle("Auto-refresh", value=True, key="auto_refresh", help=f"every {REFRESH_SECONDS:g} s")
    return REFRESH_SECONDS if on else None


def live(body: Callable[[], None]) -> None:
    """Run ``body`` as a fragment that reruns every few seconds (while auto-refresh is on). Its reruns may run on
    another thread than the page's, so ``body`` opens its store with :func:`open_store` rather than capturing one."""
    st.fragment(run_every=auto_refresh())(body)()


def store_or_note() -> Store | None:
    """The store, or a note that there is none yet."""
    store = open_store()
    if store is None:
        st.info(
            f"Nothing yet: no store at {settings().store_path}. It appears when the appliance first runs "
            "(`appliance run` or `appliance train`)."
        )
    return store


def guarded(title: str, section: Callable[[], None]) -> None:
    """Run one section of a page; a store error shows as a message in that section, not a traceback."""
    try:
        section()
    except (ApplianceError, OSError) as error:
        st.error(f"{title}: {error}")
    except Exception as error:  # sqlite3 errors from a store an older or newer appliance wrote
        if type(error).__module__ == "sqlite3":
            st.warning(f"{title}: nothing to show yet ({error}).")
        else:
            raise


def score_table(rows, scores: tuple[str, ...]) -> None:
    """A full-width table whose ``scores`` columns show three decimals."""
    column_config = {name: st.column_config.NumberColumn(format="%.3f") for name in scores}
    st.dataframe(rows, hide_index=True, width="stretch", column_config=column_config)


def nothing_yet(what: str) -> None:
    st.caption(f"Nothing yet: {what}.")


def events_table(store: Store, *, levels: tuple[str, ...] | None, limit: int, empty: str) -> None:
    """The newest events (of ``levels`` only, when given) as a table, or a note when there are none."""
    rows = store.recent_events(levels=levels, limit=limit)
    if not rows:
        nothing_yet(empty)
        return
    st.dataframe(shaping.event_rows(rows), hide_index=True, width="stretch")
