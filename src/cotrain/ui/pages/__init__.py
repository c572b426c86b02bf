"""The pages; importing a module registers its routes with NiceGUI."""


def register_pages() -> None:
    from cotrain.ui.pages import audit, models, network, new_session, rewards, session_detail, sessions, users  # noqa: F401
