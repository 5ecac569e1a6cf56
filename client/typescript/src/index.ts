/**
 * credit-ledger-client for Node.js: gRPC over HTTP/2 (plaintext or TLS, with
 * an optional client certificate) through @connectrpc/connect-node.
 *
 *   import { createCreditClient } from "credit-ledger-client";
 *   const credits = createCreditClient({ baseUrl: "http://127.0.0.1:50051" });
 *
 * Browsers use `credit-ledger-client/web` (gRPC-Web) instead.
 */
import { Http2SessionManager, createGrpcTransport } from "@connectrpc/connect-node";
import type { Interceptor } from "@connectrpc/connect";

import { CreditClient } from "./client.js";
import type { CreditClientOptions } from "./client.js";

export * from "./core.js";

/** TLS settings for an `https://` server. */
export interface TlsOptions {
  /** Trust only this CA (PEM) instead of Node.js's bundled public roots. */
  caCertificatePem?: string | Uint8Array;
  /** A client certificate (PEM), for servers that require mutual TLS (with clientKeyPem). */
  clientCertificatePem?: string | Uint8Array;
  /** The private key (PEM) of clientCertificatePem. */
  clientKeyPem?: string | Uint8Array;
  /** The name the server's certificate must carry, when it is not the URL's host. */
  serverName?: string;
}

/** How to reach the server from Node.js. */
export interface NodeClientOptions extends CreditClientOptions {
  /** `http://host:port` (plaintext) or `https://host:port` (TLS). */
  baseUrl: string;
  /** TLS settings; only for an `https://` baseUrl. */
  tls?: TlsOptions;
  /** Connect interceptors run on every attempt (logging, tests). */
  interceptors?: Interceptor[];
}

/**
 * A {@link CreditClient} speaking gRPC over HTTP/2. The connection opens on
 * the first call; `close()` ends it.
 */
export function createCreditClient(options: NodeClientOptions | string): CreditClient {
  const settings: NodeClientOptions = typeof options === "string" ? { baseUrl: options } : options;
  const url = new URL(settings.baseUrl);
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new TypeError(`baseUrl must be http://host:port or https://host:port, got ${settings.baseUrl}`);
  }
  const tls = settings.tls;
  if (tls !== undefined && url.protocol !== "https:") {
    throw new TypeError("tls settings need an https:// baseUrl");
  }
  if ((tls?.clientCertificatePem === undefined) !== (tls?.clientKeyPem === undefined)) {
    throw new TypeError("tls.clientCertificatePem and tls.clientKeyPem go together");
  }
  const nodeOptions = tls === undefined ? {} : {
    ...(tls.caCertificatePem === undefined ? {} : { ca: pem(tls.caCertificatePem) }),
    ...(tls.clientCertificatePem === undefined ? {} : { cert: pem(tls.clientCertificatePem) }),
    ...(tls.clientKeyPem === undefined ? {} : { key: pem(tls.clientKeyPem) }),
    ...(tls.serverName === undefined ? {} : { servername: tls.serverName }),
  };
  const sessionManager = new Http2SessionManager(url, {}, nodeOptions);
  const transport = createGrpcTransport({
    baseUrl: settings.baseUrl,
    sessionManager,
    interceptors: settings.interceptors ?? [],
  });
  return new CreditClient(transport, settings, () => sessionManager.abort());
}

function pem(value: string | Uint8Array): string {
  return typeof value === "string" ? value : new TextDecoder().decode(value);
}
