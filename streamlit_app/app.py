"""The status page: ``streamlit run streamlit_app/app.py`` (``appliance run`` starts it with the service).

Settings come from the appliance's ``APPLIANCE_*`` variables (or ``APPLIANCE_CONFIG``): ``APPLIANCE_DATA_DIR``
names the store to read, ``APPLIANCE_PAGE_PASSWORD`` protects every page. Until the password is given, every page's
address shows the login form, so no page's script runs whatever URL is asked for, and after the login the page of
that address opens. The page scripts live in ``views/`` (a folder named ``pages/`` would switch on Streamlit's legacy
multipage mode beside ``st.navigation``: deep links then crashed with ``ModuleNotFoundError``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:  # `streamlit run streamlit_app/app.py` from anywhere
    sys.path.insert(0, str(HERE.parent))

from streamlit_app import common  # noqa: E402

PAGES = (
    ("views/overview.py", "Overview", ":material/monitor_heart:", "overview"),
    ("views/training.py", "Training runs", ":material/model_training:", "training"),
    ("views/models.py", "Models", ":material/deployed_code:", "models"),
    ("views/results.py", "Results", ":material/biotech:", "results"),
    ("views/problems.py", "Problems", ":material/report:", "problems"),
)

st.set_page_config(page_title="Microscope AutoML appliance", page_icon=":material/biotech:", layout="wide")

if common.authenticated():
    navigation = st.navigation(
        [
            st.Page(str(HERE / path), title=title, icon=icon, url_path=url, default=index == 0)
            for index, (path, title, icon, url) in enumerate(PAGES)
        ]
    )
    if common.password_required() and st.sidebar.button("Log out", key="logout"):
        st.session_state.pop("authenticated", None)
        st.rerun()
else:
    # every page's address leads to the login form (no page script runs), and the address stays, so a bookmark or
    # a link from a notification opens its page once the password is given
    navigation = st.navigation(
        [
            st.Page(common.login_page, title=title, icon=":material/lock:", url_path=url, default=index == 0)
            for index, (_, title, _, url) in enumerate(PAGES)
        ],
        position="hidden",
    )
navigation.run()
