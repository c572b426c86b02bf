"""Network: the server's hivemind DHT node, its peers, and how a volunteer joins."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from nicegui import ui

from cotrain.ui import network_data
from cotrain.ui.blocking import run_blocking
from cotrain.ui.components.badges import copyable, stat_tile, status_badge
from cotrain.ui.i18n import t
from cotrain.ui.layout import frame, page_title, sign_in_dialog

DHT_COLORS = {"running": "positive", "stopped": "grey-6", "error": "negative"}


@ui.page("/network")
async def network_page(request: Request) -> None:
    page = await frame("network")
    base_url = str(request.base_url)

    def load(start_node: bool = False) -> tuple[dict[str, Any], list[dict[str, str]]]:
        state = network_data.start() if start_node else network_data.status()
        return state, network_data.open_diloco_sessions(page.actor, base_url)

    with page.body:
        header = page_title(t("network.title"), t("network.subtitle"))
        with header:
            start = ui.button(t("network.start"), icon="power_settings_new").props(
                'unelevated no-caps data-testid="dht-start"')
        view = ui.column().classes("w-full gap-5")

    def render(state: dict[str, Any], sessions: list[dict[str, str]]) -> None:
        start.set_visibility(state["status"] != "running")
        view.clear()
        with view:
            with ui.row().classes("w-full gap-4 no-wrap"):
                with ui.card().classes("ct-card flex-1 min-w-[150px] px-5 py-4 gap-2").props("flat"):
                    ui.label(t("network.status")).classes("ct-stat-label")
                    badge = ui.badge(t(f"network.{state['status']}"), color=DHT_COLORS.get(state["status"], "grey-6"))
                    badge.classes("px-3 py-1 text-[14px] self-start").props('rounded data-testid="dht-status"')
                stat_tile(t("network.connected"), str(state["connected_peers"]), "link", testid="dht-connected")
                stat_tile(t("network.dht_size"), str(state["dht_size"]), "hub", testid="dht-size")
            with ui.card().classes("ct-card w-full p-5 gap-3").props("flat"):
                with ui.row().classes("items-center gap-2"):
                    ui.icon("volunteer_activism", size="20px").classes("text-primary")
                    ui.label(t("network.join")).classes("ct-section-title")
                if sessions:
                    ui.label(t("network.join_hint")).classes("text-sm ct-muted")
                    ui.label(t("network.wallet_hint")).classes("text-sm ct-muted")
                    for session in sessions:
                        with ui.row().classes("w-full items-center gap-3 no-wrap"):
                            with ui.column().classes("gap-0 w-56 shrink-0"):
                                ui.label(session["name"]).classes("font-medium truncate")
                                status_badge(session["status"]).classes("self-start")
                            with ui.column().classes("flex-1 min-w-0"):
                                copyable(session["command"], testid="join-command", wrap=True)
                else:
                    ui.label(t("network.join_none")).classes("text-sm ct-muted")
            if state.get("error"):
                with ui.card().classes("ct-card w-full p-4 bg-red-1 text-negative").props("flat"):
                    ui.label(state["error"]).classes("text-sm")
            with ui.card().classes("ct-card w-full p-5 gap-3").props("flat"):
                ui.label(t("network.peer_id")).classes("ct-section-title")
                if state.get("peer_id"):
                    copyable(state["peer_id"], testid="dht-peer-id")
                else:
                    ui.label(t("common.none")).classes("ct-muted")
                ui.label(t("network.addresses")).classes("ct-section-title pt-2")
                if state["visible_addresses"]:
                    ui.label(t("network.addresses_hint")).classes("text-sm ct-muted")
                    for address in state["visible_addresses"]:
                        copyable(address)
                else:
                    ui.label(t("network.no_addresses")).classes("text-sm ct-muted")
            with ui.card().classes("ct-card w-full p-5 gap-3").props("flat"):
                ui.label(t("network.peers")).classes("ct-section-title")
                if state["peers"]:
                    columns = [
                        {"name": "peer_id", "label": t("detail.peer_id"), "field": "peer_id", "align": "left",
                         "classes": "ct-mono"},
                        {"name": "addrs", "label": t("network.addrs"), "field": "addrs", "align": "left",
                         "classes": "ct-mono", ":format": "v => v.join('  ')"},
                    ]
                    ui.table(columns=columns, rows=state["peers"], row_key="peer_id").props(
                        'flat dense data-testid="dht-peers"').classes("w-full")
                else:
                    ui.label(t("network.peers_empty")).classes("text-sm ct-muted")
    async def on_start() -> None:
        if page.actor is None:
            sign_in_dialog()
            return
        start.props("loading")
        state, sessions = await run_blocking(load, True)
        start.props(remove="loading")
        render(state, sessions)
        if state["status"] == "running":
            ui.notify(t("network.started"), type="positive")

    async def refresh() -> None:
        render(*await run_blocking(load))

    start.on_click(on_start)
    render(*await run_blocking(load))
    ui.timer(10.0, refresh)
