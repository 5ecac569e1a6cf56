/**
 * credit-ledger-client for browsers: gRPC-Web over fetch through
 * @connectrpc/connect-web. Imports nothing Node-only.
 *
 *   import { createCreditClient } from "credit-ledger-client/web";
 *   const credits = createCreditClient({ baseUrl: "https://credits.example.com" });
 *
 * The server must run with --grpc-web, and with --grpc-web-allowed-origins
 * naming the page's origin when the page comes from another origin.
 */
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import type { Interceptor } from "@connectrpc/connect";

import { CreditClient } from "./client.js";
import type { CreditClientOptions } from "./client.js";

export * from "./core.js";

/** How to reach the server from a web page. */
export interface WebClientOptions extends CreditClientOptions {
  /** The server's URL, e.g. `https://credits.example.com` (the browser does TLS). */
  baseUrl: string;
  /** Connect interceptors run on every attempt. */
  interceptors?: Interceptor[];
  /** A fetch to use instead of the global one (e.g. to set `credentials`). */
  fetch?: typeof globalThis.fetch;
}

/** A {@link CreditClient} speaking gRPC-Web (binary) over fetch. */
export function createCreditClient(options: WebClientOptions | string): CreditClient {
  const settings: WebClientOptions = typeof options === "string" ? { baseUrl: options } : options;
  const transport = createGrpcWebTransport({
    baseUrl: settings.baseUrl,
    useBinaryFormat: true,
    interceptors: settings.interceptors ?? [],
    ...(settings.fetch === undefined ? {} : { fetch: settings.fetch }),
  });
  return new CreditClient(transport, settings);
}
