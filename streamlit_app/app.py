"""The status page: ``streamlit run streamlit_app/app.py`` (``appliance run`` starts it with the service).

Settings come from the appliance's ``APPLIANCE_*`` variables (or ``APPLIANCE_CONFIG``): ``APPLIANCE_DATA_DIR``
names the store to read, ``APPLIANCE_PAGE_PASSWORD`` protects every page. Until the password is given, the
navigation holds only the login page, so no page's script runs, whatever URL is asked for.
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
    ("pages/overview.py", "Overview", ":material/monitor_heart:", "overview"),
    ("pages/training.py", "Training runs", ":material/model_training:", "training"),
    ("pages/models.py", "Models", ":material/deployed_code:", "models"),
    ("pages/results.py", "Results", ":material/biotech:", "results"),
    ("pages/problems.py", "Problems", ":material/report:", "problems"),
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
    navigation = st.navigation([st.Page(common.login_page, title="Log in", icon=":material/lock:")], position="hidden")
navigation.run()
