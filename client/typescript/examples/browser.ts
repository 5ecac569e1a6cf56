// In a web page, through gRPC-Web (the server runs with --grpc-web and
// --grpc-web-allowed-origins naming this page's origin). Bundle it with any
// bundler, e.g.: esbuild examples/browser.ts --bundle --format=esm --outfile=app.js
import { CreditError, createCreditClient } from "credit-ledger-client/web";

const params = new URLSearchParams(location.search);
const credits = createCreditClient({ baseUrl: params.get("server") ?? "https://credits.example.com" });
const userId = params.get("user") ?? "alice";
const out = document.getElementById("out")!;
try {
  const receipt = await credits.topUp({ userId, amount: 25n, metadata: { from: "browser" } });
  const { balance } = await credits.getBalance(userId);
  out.textContent = JSON.stringify({
    transactionId: receipt.transaction.transactionId,
    idempotencyKey: receipt.transaction.idempotencyKey,
    balanceAfterTopUp: receipt.balance.toString(),
    balance: balance.toString(),
  });
} catch (err) {
  out.textContent = err instanceof CreditError ? `error ${err.name}: ${err.message}` : `error ${String(err)}`;
}
out.setAttribute("data-done", "true");
