// TLS with a private CA, a client certificate and an API key:
//   CREDIT_URL=https://127.0.0.1:50051 CREDIT_CA=ca.pem CREDIT_CLIENT_CERT=client.pem \
//   CREDIT_CLIENT_KEY=client.key CREDIT_API_KEY=ck_... node .build/examples/tls-and-key.js
import { readFileSync } from "node:fs";

import { createCreditClient } from "credit-ledger-client";

const env = (name: string): string => {
  const value = process.env[name];
  if (value === undefined) throw new Error(`set ${name}`);
  return value;
};

const credits = createCreditClient({
  baseUrl: env("CREDIT_URL"), // https://host:port
  apiKey: env("CREDIT_API_KEY"), // sent as "authorization: Bearer <key>"
  tls: {
    caCertificatePem: readFileSync(env("CREDIT_CA")), // trust only this CA
    clientCertificatePem: readFileSync(env("CREDIT_CLIENT_CERT")), // for mutual TLS
    clientKeyPem: readFileSync(env("CREDIT_CLIENT_KEY")),
  },
  deadlineMs: 5_000, // per attempt (default 10 000)
});
try {
  const userId = `tls-${Date.now()}`;
  await credits.createUser({ userId, email: `${userId}@example.com` });
  const { transaction } = await credits.topUp({ userId, amount: 10n });
  console.log(`written by ${transaction.createdBy} (${transaction.createdByCertificateSubject})`);
} finally {
  credits.close();
}
