"""Rewards: sign in with an Aptos wallet (the chain's wallet sign-in), then my contributions (with the rounds
the session's validator verified, and why the others were not) and my rewards with their payout status, and
binding a running peer to the wallet (the peer's half pasted, the wallet's signed here with signMessage)."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from nicegui import run, ui

from cotrain.chain.orm import ContributionStatus, PayoutStatus
from cotrain.ui import format as fmt
from cotrain.ui import rewards_data
from cotrain.ui.blocking import run_blocking
from cotrain.ui.i18n import t
from cotrain.ui.layout import empty_state, frame, page_title

SIGN_IN = """
try { return {ok: true, ...(await window.cotrainWalletSignIn('/api/v1'))}; }
catch (e) { return {ok: false, error: String(e && e.message || e)}; }
"""
SIGN_BINDING = """
const wallet = window.aptos || window.petra;
if (!wallet) return {ok: false, error: "No Aptos wallet was found in this browser; install one (e.g. Petra)."};
try {
  const account = await wallet.connect();
  const signed = await wallet.signMessage({message: %s, nonce: %s, address: true, application: true, chainId: true});
  return {ok: true, publicKey: String(account.publicKey), signature: String(signed.signature),
          fullMessage: signed.fullMessage};
} catch (e) { return {ok: false, error: String(e && e.message || e)}; }
"""
PAYOUT_COLORS = {PayoutStatus.PAID: "positive", PayoutStatus.DUE: "amber-8", PayoutStatus.PENDING: "light-blue-7",
                 PayoutStatus.FAILED: "negative", PayoutStatus.NONE: "grey-6"}
OCTAS_PER_APT = 100_000_000


@ui.page("/rewards")
async def rewards_page(request: Request) -> None:
    page = await frame("rewards")
    script = rewards_data.signin_script()
    with page.body:
        header = page_title(t("rewards.title"), t("rewards.subtitle"))
        if script is None:
            _unavailable(t("rewards.unavailable"))
            return
        try:
            address = await run.io_bound(rewards_data.wallet_of, request.cookies.get(rewards_data.WALLET_COOKIE))
        except rewards_data.RewardsUnavailable as exc:
            _unavailable(f"{t('rewards.unavailable')} ({exc})")
            return
        ui.add_body_html(f"<script>{script}</script>")
        status = ui.column().classes("w-full gap-5").props('data-testid="rewards-state"')

    async def connect() -> None:
        button.props("loading")
        result = await ui.run_javascript(SIGN_IN, timeout=180)
        button.props(remove="loading")
        if result and result.get("ok"):
            ui.navigate.reload()  # the server set the wallet cookie
        else:
            error = (result or {}).get("error") or "?"
            ui.notify(t("rewards.failed", error=error), type="negative", multi_line=True)

    with header:
        button = ui.button(t("rewards.connect"), icon="account_balance_wallet", on_click=connect).props(
            'unelevated no-caps data-testid="connect-wallet"')
    if address is None:
        with status, ui.card().classes("ct-card w-full").props("flat"):
            with empty_state("account_balance_wallet", t("rewards.connect"), t("rewards.connect_hint")):
                hint = ui.label(t("rewards.no_wallet")).classes("text-sm text-amber-9 text-center pt-2")
            hint.props('data-testid="no-wallet"')
            hint.set_visibility(False)
        await ui.context.client.connected()
        has_wallet = await ui.run_javascript("return !!(window.aptos || window.petra)")
        hint.set_visibility(not has_wallet)
        return

    button.set_visibility(False)
    data = await run_blocking(rewards_data.mine, address)
    with status:
        with ui.card().classes("ct-card w-full px-5 py-3").props("flat"), ui.row().classes("items-center gap-2"):
            ui.icon("verified", size="20px").classes("text-positive")
            ui.label(t("rewards.connected", address=address)).classes("ct-mono text-sm").props(
                'data-testid="wallet-address"')
        _bind_card(address)
        _contributions(data["contributions"])
        _rewards(data["rewards"])


def _bind_card(address: str) -> None:
    """Bind a running peer: its token (the peer's half, from `cotrain rewards peer-signature`) is checked, the
    browser wallet signs the binding text with a nonce from the server, and the server records both halves."""
    with ui.card().classes("ct-card w-full p-5 gap-3").props('flat data-testid="bind-peer"'):
        ui.label(t("rewards.bind.title")).classes("ct-section-title")
        ui.label(t("rewards.bind.hint")).classes("text-sm ct-muted")
        ui.label(f"cotrain rewards peer-signature --session SESSION --wallet {address}").classes(
            "ct-code text-xs w-full break-all")
        token = ui.textarea(t("rewards.bind.token")).classes("w-full ct-mono text-xs").props(
            'outlined dense rows=3 data-testid="peer-token"')
        with ui.row().classes("items-center gap-3 w-full no-wrap"):
            button = ui.button(t("rewards.bind.button"), icon="link").props(
                'unelevated no-caps data-testid="bind-peer-button"')
            result = ui.label().classes("text-sm").props('data-testid="bind-result"')

    def show(text: str, ok: bool) -> None:
        result.set_text(text)
        result.classes(replace="text-sm " + ("text-positive" if ok else "text-negative"))

    async def bind() -> None:
        button.props("loading")
        try:
            half = rewards_data.peer_half(token.value or "", address)
            nonce = await run.io_bound(rewards_data.binding_nonce, half)
            if nonce is None:  # the page was closed meanwhile
                return
            signed = await ui.run_javascript(SIGN_BINDING % (json.dumps(nonce["message"]), json.dumps(nonce["nonce"])),
                                             timeout=180)
            if not (signed and signed.get("ok")):
                raise rewards_data.BindRefused((signed or {}).get("error") or "the wallet did not sign.")
            await rewards_data.bind(half, signed)
        except rewards_data.BindRefused as exc:
            show(t("rewards.bind.failed", error=exc), ok=False)
        else:
            show(t("rewards.bind.done", peer=half.peer_id, session=half.session_id), ok=True)
            token.set_value("")
        finally:
            button.props(remove="loading")

    button.on_click(bind)


def _unavailable(message: str) -> None:
    with ui.card().classes("ct-card w-full").props('flat data-testid="rewards-state"'):
        empty_state("toll", t("rewards.title"), message)


SESSION_SLOT = r"""
<q-td :props="props">
  <a :href="'/sessions/' + props.row.session_id"
     class="text-primary no-underline font-medium">{{ props.row.session }}</a>
  <div class="ct-mono text-[11px] ct-muted">{{ props.row.session_id }}</div>
</q-td>"""
BADGE_SLOT = r"""
<q-td :props="props">
  <q-badge rounded :color="props.row.color" :label="props.value" class="px-2 py-1" />
  <div v-if="props.row.reason" class="text-[11px] ct-muted">{{ props.row.reason }}</div>
</q-td>"""
ROUNDS_SLOT = r"""
<q-td :props="props" style="white-space: normal; max-width: 420px">
  <span v-if="props.row.judged_rounds" class="font-medium">{{ props.row.rounds_shown }}</span>
  <span v-else class="ct-muted">—</span>
  <div v-for="r in props.row.round_reasons" :key="r.reason" class="text-[11px] ct-muted q-mt-xs">
    <q-badge outline color="grey-7" :label="r.reason + ' × ' + r.rounds" class="q-mr-xs" />{{ r.sentence }}
  </div>
</q-td>"""
TX_SLOT = r"""
<q-td :props="props">
  <a v-if="props.row.explorer_url" :href="props.row.explorer_url" target="_blank" class="ct-mono text-primary">
    {{ props.row.tx_hash.slice(0, 10) }}…</a>
  <span v-else class="ct-muted">—</span>
</q-td>"""


def _contributions(rows: list[dict[str, Any]]) -> None:
    with ui.card().classes("ct-card w-full p-5 gap-3").props("flat"):
        ui.label(t("rewards.contributions")).classes("ct-section-title")
        if not rows:
            ui.label(t("rewards.empty")).classes("text-sm ct-muted")
            return
        columns = [
            {"name": "session", "label": t("models.col.session"), "field": "session", "align": "left"},
            {"name": "peer_id", "label": t("detail.peer_id"), "field": "peer_id", "align": "left", "classes": "ct-mono",
             ":format": "v => v.length > 16 ? v.slice(0, 8) + '…' + v.slice(-6) : v"},
            {"name": "tokens", "label": t("rewards.tokens"), "field": "tokens_shown", "align": "right"},
            {"name": "tps", "label": t("detail.peer_tps"), "field": "tokens_per_second", "align": "right",
             ":format": "v => Math.round(v).toLocaleString()"},
            {"name": "rounds", "label": t("rewards.verified_rounds"), "field": "verified_rounds", "align": "left"},
            {"name": "status", "label": t("sessions.col.status"), "field": "status", "align": "left"},
        ]
        for row in rows:
            row["key"] = f"{row['session_id']}/{row['peer_id']}"
            row["tokens_shown"] = fmt.count(row["tokens"])
            row["rounds_shown"] = t("rewards.rounds_of", verified=row.get("verified_rounds") or 0,
                                    judged=row.get("judged_rounds") or 0)
            row["color"] = "positive" if row["status"] == ContributionStatus.VERIFIED else "grey-6"
        table = ui.table(columns=columns, rows=rows, row_key="key").props('flat dense data-testid="contributions"')
        table.classes("w-full")
        table.add_slot("body-cell-session", SESSION_SLOT)
        table.add_slot("body-cell-status", BADGE_SLOT)
        table.add_slot("body-cell-rounds", ROUNDS_SLOT)


def _rewards(rows: list[dict[str, Any]]) -> None:
    with ui.card().classes("ct-card w-full p-5 gap-3").props("flat"):
        ui.label(t("rewards.rewards")).classes("ct-section-title")
        if not rows:
            ui.label(t("rewards.empty")).classes("text-sm ct-muted")
            return
        columns = [
            {"name": "session", "label": t("models.col.session"), "field": "session", "align": "left"},
            {"name": "amount", "label": t("rewards.amount"), "field": "amount_shown", "align": "right",
             "classes": "font-semibold"},
            {"name": "payout", "label": t("rewards.payout"), "field": "payout_status", "align": "left"},
            {"name": "tx", "label": t("rewards.transaction"), "field": "tx_hash", "align": "left"},
        ]
        for row in rows:
            amount = row["amount"] / OCTAS_PER_APT if row["asset"] == "APT" else row["amount"]
            row["amount_shown"] = f"{amount:g} {row['asset']}"
            row["color"] = PAYOUT_COLORS.get(row["payout_status"], "grey-6")
            row["reason"] = ""
            row["key"] = f"{row['session_id']}/{row['address']}"
        table = ui.table(columns=columns, rows=rows, row_key="key").props('flat dense data-testid="rewards"')
        table.classes("w-full")
        table.add_slot("body-cell-session", SESSION_SLOT)
        table.add_slot("body-cell-payout", BADGE_SLOT)
        table.add_slot("body-cell-tx", TX_SLOT)
