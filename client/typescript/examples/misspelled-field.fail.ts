// MUST NOT COMPILE: `amout` is not a field of TopUpInput. test/compile.test.mjs
// runs tsc on this file and checks that it fails naming `amout`.
import { createCreditClient } from "credit-ledger-client";

const credits = createCreditClient({ baseUrl: "http://127.0.0.1:50051" });
await credits.topUp({ userId: "alice", amout: 100n });
