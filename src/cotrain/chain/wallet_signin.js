// CoTrain wallet sign-in for the browser: connects the injected Aptos wallet (Petra-style `window.aptos`),
// asks the server for a nonce, has the wallet sign it (AIP-62 signMessage) and sends the signed full message
// back. On success the server sets the `cotrain_wallet` cookie; the token is also returned.
// Usage: const me = await cotrainWalletSignIn("/api/v1");   // → {token, address, expiresAt}
//        await cotrainWalletSignOut("/api/v1");             // revokes the token and clears the cookie
// The server checks that the wallet signed exactly the issued message and nonce, for its chain and its
// origin (COTRAIN_PUBLIC_ORIGIN, or loopback), so the address, application and chain id are all asked for.
(function () {
  function hex(value) {
    if (typeof value === "string") return value;
    if (value && typeof value.toString === "function") return value.toString();
    throw new Error("The wallet returned a value that is not hex.");
  }

  async function postJson(url, body) {
    const res = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    const data = await res.json().catch(() => ({}));
    if (!res.ok) {
      const detail = data.detail;
      const message = (detail && detail.message) || (typeof detail === "string" ? detail : null);
      const err = new Error(message || `The server refused the request (${res.status}).`);
      err.reason = detail && detail.reason;
      throw err;
    }
    return data;
  }

  window.cotrainWalletSignIn = async function (apiBase) {
    apiBase = apiBase || "/api/v1";
    const wallet = window.aptos || window.petra;
    if (!wallet) throw new Error("No Aptos wallet was found in this browser. Install one (e.g. Petra) and reload.");
    const account = await wallet.connect();
    const address = hex(account.address);
    const nonce = await postJson(apiBase + "/auth/nonce", { address });
    const signed = await wallet.signMessage({
      message: nonce.message,
      nonce: nonce.nonce,
      address: true,
      application: true,
      chainId: true,
    });
    return postJson(apiBase + "/auth/verify", {
      address,
      publicKey: hex(account.publicKey),
      fullMessage: signed.fullMessage,
      signature: hex(signed.signature),
    });
  };

  window.cotrainWalletSignOut = async function (apiBase) {
    apiBase = apiBase || "/api/v1";
    const res = await fetch(apiBase + "/auth/logout", { method: "POST", credentials: "same-origin" });
    if (!res.ok && res.status !== 401) throw new Error(`The server refused to sign out (${res.status}).`);
  };
})();
