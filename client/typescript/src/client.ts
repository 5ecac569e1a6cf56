/**
 * The hand-written layer over the generated CreditService: the same contract
 * as the Rust client (client/src). It works over any Connect transport, so
 * the Node.js entry point (gRPC over HTTP/2) and the browser entry point
 * (gRPC-Web) share it; this module imports nothing Node-only.
 *
 * - every call carries `authorization: Bearer <key>` when an API key is set;
 * - every attempt has its own deadline (10 s unless set otherwise);
 * - UNAVAILABLE, ABORTED, RESOURCE_EXHAUSTED and DEADLINE_EXCEEDED are
 *   retried (4 attempts, ~100/200/400 ms apart, equal jitter, at most 2 s);
 * - every write carries an idempotency key, made by the client (a random
 *   UUID) when the caller gives none, and the same key on every retry;
 * - failures reject with a typed {@link CreditError};
 * - the two streams (watchTransactions, watchBalance) are async iterables
 *   without a deadline that reconnect by themselves (see {@link WatchOptions});
 *   watchTransactions can carry balance alert events too (`content`).
 *
 * int64 values (amounts, balances, sequences) are `bigint`; amounts may be
 * passed as `number` too when they are safe integers.
 */
import { equals } from "@bufbuild/protobuf";
import type { JsonObject } from "@bufbuild/protobuf";
import { durationFromMs, timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { Timestamp } from "@bufbuild/protobuf/wkt";
import { createClient } from "@connectrpc/connect";
import type { Client, Transport } from "@connectrpc/connect";

import {
  CreditCategory,
  CreditService,
  FeedContent,
  GetBalanceResponseSchema,
  HoldState,
  TransactionType,
} from "./gen/credit/v1/credit_pb.js";
import type {
  AlertEvent,
  BalanceAlert,
  CaptureResponse,
  GetBalanceResponse,
  Hold,
  Lot,
  ReleaseResponse,
  ReserveResponse,
  Transaction,
  User,
  VerifyLedgerResponse,
} from "./gen/credit/v1/credit_pb.js";
import {
  Code,
  ERROR_DOMAIN,
  InvalidInput,
  InvalidResponse,
  Unavailable,
  isRetryableCode,
  toCreditError,
} from "./errors.js";
import type { CreditError } from "./errors.js";
import { backoffMs, resolveRetryPolicy, sleep } from "./retry.js";
import type { RetryPolicy } from "./retry.js";

/** The deadline of each attempt of a call unless the caller sets another. */
export const DEFAULT_DEADLINE_MS = 10_000;

/** An int64 amount of credits: a bigint, or a number that is a safe integer. */
export type Amount = bigint | number;

/** Settings of a {@link CreditClient} that do not depend on the transport. */
export interface CreditClientOptions {
  /** Sent with every call as `authorization: Bearer <apiKey>`. Use it over TLS. */
  apiKey?: string;
  /** The deadline of each attempt in ms (default 10 000). */
  deadlineMs?: number;
  /** How failed calls are retried (default {@link DEFAULT_RETRY_POLICY}); `NO_RETRY` disables. */
  retry?: Partial<RetryPolicy>;
}

/** Options of one call. */
export interface CallOptions {
  /** Cancels the call (and its retries). */
  signal?: AbortSignal;
  /** This call's deadline per attempt in ms, instead of the client's. */
  deadlineMs?: number;
  /** Extra request headers. */
  headers?: Record<string, string>;
}

/** What every write takes besides its own fields. */
export interface WriteOptions {
  /**
   * The key that makes this write safe to send again (at most 128
   * characters). Without one the client makes a random UUID; either way
   * every retry of this write carries the same key.
   */
  idempotencyKey?: string;
  /** Stored with the transaction and returned as given (a JSON object of at most 16 KiB). */
  metadata?: JsonObject;
}

/** A new user. */
export interface CreateUserInput {
  /** The identifier to create the user under (1 to 128 characters). */
  userId: string;
  /** The user's email address (required, at most 320 characters). */
  email: string;
  /** The user's display name (optional, at most 256 characters). */
  name?: string;
}

/** What a top-up or grant says about the lot its credits go to. */
export interface LotOptions {
  /** When the credits expire (in the future); never when omitted. */
  expireTime?: Date;
  /**
   * The draw priority, an integer 0-100: lower is spent first. Omitted: the
   * server's default (100 for a top-up, 50 for a grant).
   */
  priority?: number;
}

/** Purchased credits to add, in a new PAID lot. */
export interface TopUpInput extends WriteOptions, LotOptions {
  userId: string;
  /** The credits to add; > 0. */
  amount: Amount;
}

/** What a spend paid for; every field is optional free text (at most 256 characters). */
export interface UsageInput {
  graphExecId?: string;
  graphId?: string;
  nodeId?: string;
  nodeExecId?: string;
  blockId?: string;
  reason?: string;
}

/** Credits to take for metered usage. */
export interface SpendInput extends WriteOptions {
  userId: string;
  /** The credits to take; > 0 and no more than the balance. */
  amount: Amount;
  /** What the credits paid for. */
  usage?: UsageInput;
}

/** Credits to give without payment, in a new lot. */
export interface GrantInput extends WriteOptions, LotOptions {
  userId: string;
  /** The credits to give; > 0. */
  amount: Amount;
  /** Why the credits were given (at most 256 characters). */
  reason?: string;
  /**
   * `CreditCategory.PROMOTIONAL` (the default when omitted) or
   * `CreditCategory.PAID`, for credits sold through another channel.
   */
  category?: CreditCategory;
}

/** A refund of an earlier TOP_UP, USAGE or GRANT of the same user. */
export interface RefundInput extends WriteOptions {
  userId: string;
  /** The transaction to refund. */
  transactionId: string;
  /** The credits to refund (> 0); everything not yet refunded when omitted. */
  amount?: Amount;
  /** Why the refund was made (at most 256 characters). */
  reason?: string;
}

/** Which of a user's transactions to list. */
export interface HistoryQuery {
  userId: string;
  /** Only these types; all when empty or omitted. */
  types?: TransactionType[];
  /** Only transactions created at or after this time. */
  createdAfter?: Date;
  /** Only transactions created before this time. */
  createdBefore?: Date;
  /** Only USAGE transactions of this graph execution. */
  graphExecId?: string;
  /** Only transactions written with this API key name (Transaction.createdBy). */
  createdBy?: string;
  /** Transactions per page: the server's default (50) when omitted, at most 1000. */
  pageSize?: number;
}

/** A query for one page: a {@link HistoryQuery} plus where to start. */
export interface PageQuery extends HistoryQuery {
  /** The nextPageToken of an earlier page of the same query; the first page when omitted. */
  pageToken?: string;
}

/** One page of history. */
export interface Page {
  /** The transactions, newest first. */
  transactions: Transaction[];
  /** The token for the next page; undefined on the last page. */
  nextPageToken: string | undefined;
}

/** The answer of every write: the applied transaction and the balance right after it. */
export interface Receipt {
  transaction: Transaction;
  balance: bigint;
}

/** The answer of topUp and grant: a {@link Receipt} plus the lot the credits went to. */
export interface LotReceipt extends Receipt {
  /**
   * The lot the write made (`remaining` as of the write). Undefined only
   * when a retry is answered for a top-up or grant written before the
   * server had lots.
   */
  lot: Lot | undefined;
}

/** Credits to hold for work whose cost is known later. */
export interface ReserveInput extends WriteOptions {
  userId: string;
  /** The credits to hold; > 0 and at most the available balance. */
  amount: Amount;
  /** How long the hold lasts, in ms (whole ms). At most one of ttlMs and expireTime. */
  ttlMs?: number;
  /** When the hold ends (in the future). Without it or ttlMs, the server's default TTL. */
  expireTime?: Date;
  /** What the credits are held for (also the capture's usage unless it gives its own). */
  usage?: UsageInput;
}

/** The real cost of the work a hold was placed for. */
export interface CaptureInput extends WriteOptions {
  userId: string;
  /** The hold to settle. */
  holdId: string;
  /** The real cost, >= 0; 0 releases the hold. */
  amount: Amount;
  /** What the credits paid for; the hold's usage when omitted. */
  usage?: UsageInput;
}

/** A hold to give back. */
export interface ReleaseInput {
  userId: string;
  /** The hold to give back. */
  holdId: string;
  /** Why (at most 256 characters). */
  reason?: string;
  /** The key that makes this release safe to send again; a random UUID when omitted. */
  idempotencyKey?: string;
}

/** Which of a user's holds to list. */
export interface HoldQuery {
  userId: string;
  /** Only holds in these states (as of now); all when empty or omitted. */
  states?: HoldState[];
  /** Holds per page: the server's default (50) when omitted, at most 1000. */
  pageSize?: number;
}

/** A query for one page of holds: a {@link HoldQuery} plus where to start. */
export interface HoldPageQuery extends HoldQuery {
  /** The nextPageToken of an earlier page of the same query; the first page when omitted. */
  pageToken?: string;
}

/** One page of holds. */
export interface HoldPage {
  /** The holds, newest first. */
  holds: Hold[];
  /** The token for the next page; undefined on the last page. */
  nextPageToken: string | undefined;
}

/**
 * The answer of reserve, capture and release: the hold as it is now, the
 * USAGE transaction a capture of more than 0 wrote, and the balances after.
 */
export interface HoldReceipt {
  hold: Hold;
  /** The USAGE transaction of a capture; undefined for reserve, release and a capture of 0. */
  transaction: Transaction | undefined;
  balance: bigint;
  /** balance minus the active holds. */
  available: bigint;
}

/** Which of a user's lots to list. */
export interface LotQuery {
  userId: string;
  /** Also lots with nothing left (spent, refunded or expired); only lots with credits left when omitted. */
  includeEmpty?: boolean;
  /** Lots per page: the server's default (50) when omitted, at most 1000. */
  pageSize?: number;
}

/** A query for one page of lots: a {@link LotQuery} plus where to start. */
export interface LotPageQuery extends LotQuery {
  /** The nextPageToken of an earlier page of the same query; the first page when omitted. */
  pageToken?: string;
}

/**
 * One page of lots. It may hold fewer lots than pageSize (even none) and
 * still have a nextPageToken: only an undefined token ends the listing.
 */
export interface LotPage {
  /** The lots, in draw order. */
  lots: Lot[];
  /** The token for the next page; undefined on the last page. */
  nextPageToken: string | undefined;
}

/**
 * A user's balance (the generated GetBalanceResponse), with `alerts`: the
 * user's balance alerts in force, lowest threshold first.
 */
export type Balance = GetBalanceResponse;

/** Options of {@link CreditClient.setBalanceAlert}. */
export interface SetBalanceAlertOptions extends CallOptions {
  /**
   * The key that makes this call safe to send again (at most 128
   * characters): the same key returns the same alert, even after it was
   * deleted; the same key with another threshold is IdempotencyKeyReused.
   * Without one the client makes a random UUID, sent on every retry. Either
   * way, setting a threshold that an alert in force already has returns that
   * alert.
   */
  idempotencyKey?: string;
}

/** Which page of a user's alert events to list. */
export interface AlertEventPageQuery {
  /** Events per page: the server's default (50) when omitted, at most 1000. */
  pageSize?: number;
  /** The nextPageToken of an earlier page; the first page when omitted. */
  pageToken?: string;
}

/** One page of alert events. */
export interface AlertEventPage {
  /** The events, newest first. */
  events: AlertEvent[];
  /** The token for the next page; undefined on the last page. */
  nextPageToken: string | undefined;
}

/**
 * How a watch stream ({@link CreditClient.watchTransactions},
 * {@link CreditClient.watchBalance}) runs. A stream has no deadline (it is
 * meant to stay open); it carries the client's API key.
 */
export interface WatchOptions {
  /**
   * Reconnect by itself (default true) when the stream ends: after
   * UNAVAILABLE (the server is shutting down, unreachable, or the connection
   * broke), after RESOURCE_EXHAUSTED with reason SLOW_CONSUMER, and when the
   * server ends the stream without an error. A transaction feed resumes
   * right after the last message it yielded, so nothing is missed or
   * repeated. Waits between reconnects follow the retry policy; when
   * `maxAttempts` connections in a row end without a message, the last
   * error is thrown. Every other error (InvalidArgument, PermissionDenied,
   * TooManyStreams, ...) is thrown at once. With `false`, the iterable ends
   * when the stream does and throws the error that ended it.
   */
  resume?: boolean;
  /** Ends the stream (and any wait to reconnect); the iteration throws a CreditError with code CANCELED. */
  signal?: AbortSignal;
  /** The reconnect policy of this stream instead of the client's retry policy (any subset). */
  retry?: Partial<RetryPolicy>;
  /** Extra request headers. */
  headers?: Record<string, string>;
}

/** Which transactions {@link CreditClient.watchTransactions} streams. */
export interface WatchTransactionsOptions extends WatchOptions {
  /** The user to watch; every user when omitted or empty (needs the admin role). */
  userId?: string;
  /**
   * Start right after this cursor (a `cursor` of an earlier message of a
   * feed); from now when omitted or empty.
   */
  startAfter?: string;
  /** Only these types; all when empty or omitted. Heartbeats still come. Ignored with `content` ALERT_EVENTS. */
  types?: TransactionType[];
  /**
   * What the feed carries: `FeedContent.UNSPECIFIED` (the default,
   * transactions only), `FeedContent.TRANSACTIONS_AND_ALERT_EVENTS` (each
   * alert event right after the transaction that crossed the threshold), or
   * `FeedContent.ALERT_EVENTS` (alert events only).
   */
  content?: FeedContent;
}

/**
 * One message of {@link CreditClient.watchTransactions}: a transaction, an
 * alert event (when `content` asks for them), or a heartbeat (neither).
 */
export interface FeedMessage {
  /** The committed transaction; undefined in a heartbeat and in an alert event's message. */
  transaction?: Transaction;
  /**
   * A balance alert event (only with `content` TRANSACTIONS_AND_ALERT_EVENTS
   * or ALERT_EVENTS); undefined otherwise. Its `eventId` is stable: use it
   * as the idempotency key of what the event leads to (a top-up).
   */
  alertEvent?: AlertEvent;
  /**
   * Opaque position in the feed: `startAfter: cursor` gives everything after
   * this message exactly once, on any server process over the same
   * database. A heartbeat's cursor says nothing matching was committed up
   * to it. Store the cursor of the last message you processed.
   */
  cursor: string;
}

/**
 * Whether a watch stream that ended with `err` is opened again: UNAVAILABLE
 * (any reason: SHUTTING_DOWN, DATABASE_UNAVAILABLE, a refused connection),
 * SLOW_CONSUMER, and failures of the connection itself, which carry no
 * status from the service (a reset stream, a connection closed before the
 * trailers).
 */
function resumable(err: CreditError): boolean {
  if (err.code === Code.Unavailable) return true;
  if (err.code === Code.ResourceExhausted) return err.domain === ERROR_DOMAIN && err.reason === "SLOW_CONSUMER";
  const fromTransport = err.domain !== ERROR_DOMAIN && !(err instanceof InvalidResponse);
  return fromTransport && [Code.Aborted, Code.Internal, Code.Unknown, Code.Canceled].includes(err.code);
}

const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;

/** An amount as the int64 the wire carries; refuses fractions and out-of-range values. */
function toInt64(value: Amount, field: string): bigint {
  if (typeof value === "number") {
    if (!Number.isSafeInteger(value)) {
      throw new InvalidInput(`${field} must be a safe integer or a bigint, got ${value}`);
    }
    return BigInt(value);
  }
  if (typeof value !== "bigint") {
    throw new InvalidInput(`${field} must be a bigint or a number, got ${typeof value}`);
  }
  if (value < INT64_MIN || value > INT64_MAX) {
    throw new InvalidInput(`${field} ${value} is outside the int64 range`);
  }
  return value;
}

/** A new idempotency key (a random UUID), for callers that want to know the key before sending. */
export function newIdempotencyKey(): string {
  const webCrypto = globalThis.crypto;
  if (typeof webCrypto?.randomUUID === "function") return webCrypto.randomUUID();
  // Pages served over plain http from a non-local host have no randomUUID.
  const bytes = webCrypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6]! & 0x0f) | 0x40;
  bytes[8] = (bytes[8]! & 0x3f) | 0x80;
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

const INT32_MIN = -(2 ** 31);
const INT32_MAX = 2 ** 31 - 1;

/**
 * A lot's priority as the int32 the wire carries. Only non-integers and
 * values outside int32 are refused here; the server says what is wrong with
 * one outside 0-100 (InvalidArgument, field `priority`).
 */
function toPriority(value: number | undefined): number | undefined {
  if (value === undefined) return undefined;
  if (!Number.isInteger(value) || value < INT32_MIN || value > INT32_MAX) {
    throw new InvalidInput(`priority must be an integer 0-100, got ${value}`);
  }
  return value;
}

/** A Date as a Timestamp; refuses what is not a valid Date. */
function toTimestamp(value: Date | undefined, field: string): Timestamp | undefined {
  if (value === undefined) return undefined;
  if (!(value instanceof Date) || Number.isNaN(value.getTime())) {
    throw new InvalidInput(`${field} must be a valid Date, got ${String(value)}`);
  }
  return timestampFromDate(value);
}

function required<T>(value: T | undefined, what: string): T {
  if (value === undefined) throw new InvalidResponse(`the server's answer has no ${what}`);
  return value;
}

/** The CreditService's RPCs with retries, deadlines, credentials, idempotency keys and typed errors. */
export class CreditClient {
  /** The generated Connect client (no retries, no key, no deadline): for what this layer lacks. */
  readonly raw: Client<typeof CreditService>;
  /** The retry policy in force. */
  readonly retryPolicy: RetryPolicy;
  /** The deadline of each attempt in ms. */
  readonly deadlineMs: number;
  readonly #authorization: string | undefined;
  readonly #onClose: (() => void) | undefined;

  /**
   * A client over `transport` (see `createCreditClient` in
   * `credit-ledger-client` for Node.js and `credit-ledger-client/web` for
   * browsers, which make the transport). `onClose` runs on {@link close}.
   */
  constructor(transport: Transport, options: CreditClientOptions = {}, onClose?: () => void) {
    this.raw = createClient(CreditService, transport);
    this.retryPolicy = resolveRetryPolicy(options.retry);
    this.deadlineMs = options.deadlineMs ?? DEFAULT_DEADLINE_MS;
    if (!(this.deadlineMs > 0)) throw new RangeError("deadlineMs must be > 0");
    if (options.apiKey !== undefined && !/^[\x21-\x7e]+$/.test(options.apiKey)) {
      throw new TypeError("the API key has characters a header cannot carry");
    }
    this.#authorization = options.apiKey === undefined ? undefined : `Bearer ${options.apiKey}`;
    this.#onClose = onClose;
  }

  /** Closes the connection (Node.js); calls after this fail. */
  close(): void {
    this.#onClose?.();
  }

  /**
   * Calls one RPC, retrying retryable failures with the very same request
   * (and so the same idempotency key).
   */
  async #call<R>(
    send: (options: { timeoutMs: number; signal?: AbortSignal; headers: Record<string, string> }) => Promise<R>,
    options: CallOptions | undefined,
  ): Promise<R> {
    const headers: Record<string, string> = { ...options?.headers };
    if (this.#authorization !== undefined) headers["authorization"] = this.#authorization;
    const timeoutMs = options?.deadlineMs ?? this.deadlineMs;
    const signal = options?.signal;
    for (let attempt = 1; ; attempt += 1) {
      try {
        return await send({ timeoutMs, signal, headers });
      } catch (reason) {
        const err = toCreditError(reason);
        if (attempt >= this.retryPolicy.maxAttempts || !isRetryableCode(err.code) || signal?.aborted) {
          throw err;
        }
        try {
          await sleep(backoffMs(this.retryPolicy, attempt), signal);
        } catch (aborted) {
          throw toCreditError(aborted);
        }
      }
    }
  }

  async #write<R extends { transaction?: Transaction; balance: bigint }>(
    send: (
      idempotencyKey: string,
      options: { timeoutMs: number; signal?: AbortSignal; headers: Record<string, string> },
    ) => Promise<R>,
    input: WriteOptions,
    options: CallOptions | undefined,
  ): Promise<Receipt> {
    // Made once, before the first attempt: every retry sends the same key.
    const idempotencyKey = input.idempotencyKey ?? newIdempotencyKey();
    const response = await this.#call((o) => send(idempotencyKey, o), options);
    return { transaction: required(response.transaction, "transaction"), balance: response.balance };
  }

  async #lotWrite<R extends { transaction?: Transaction; balance: bigint; lot?: Lot }>(
    send: (
      idempotencyKey: string,
      options: { timeoutMs: number; signal?: AbortSignal; headers: Record<string, string> },
    ) => Promise<R>,
    input: WriteOptions,
    options: CallOptions | undefined,
  ): Promise<LotReceipt> {
    // Made once, before the first attempt: every retry sends the same key.
    const idempotencyKey = input.idempotencyKey ?? newIdempotencyKey();
    const response = await this.#call((o) => send(idempotencyKey, o), options);
    return {
      transaction: required(response.transaction, "transaction"),
      balance: response.balance,
      lot: response.lot,
    };
  }

  /** Creates a user with a zero balance (or returns the existing one with the same email). */
  async createUser(input: CreateUserInput, options?: CallOptions): Promise<User> {
    const request = { userId: input.userId, email: input.email, name: input.name ?? "" };
    const response = await this.#call((o) => this.raw.createUser(request, o), options);
    return required(response.user, "user");
  }

  /** Returns one user; rejects with UserNotFound when there is none. */
  async getUser(userId: string, options?: CallOptions): Promise<User> {
    const response = await this.#call((o) => this.raw.getUser({ userId }, o), options);
    return required(response.user, "user");
  }

  /** Returns a user's current balance. */
  async getBalance(userId: string, options?: CallOptions): Promise<Balance> {
    return this.#call((o) => this.raw.getBalance({ userId }, o), options);
  }

  /**
   * Adds purchased credits to a user's balance, in a new PAID lot that
   * expires at `expireTime` (never when omitted) and is drawn at `priority`
   * (default 100, after grants).
   */
  async topUp(input: TopUpInput, options?: CallOptions): Promise<LotReceipt> {
    const amount = toInt64(input.amount, "amount");
    const expireTime = toTimestamp(input.expireTime, "expireTime");
    const priority = toPriority(input.priority);
    return this.#lotWrite(
      (idempotencyKey, o) =>
        this.raw.topUp(
          { userId: input.userId, amount, idempotencyKey, metadata: input.metadata, expireTime, priority },
          o,
        ),
      input,
      options,
    );
  }

  /** Takes credits for metered usage; rejects with InsufficientBalance when the balance is too small. */
  async spend(input: SpendInput, options?: CallOptions): Promise<Receipt> {
    const amount = toInt64(input.amount, "amount");
    return this.#write(
      (idempotencyKey, o) =>
        this.raw.spend(
          { userId: input.userId, amount, idempotencyKey, usage: input.usage, metadata: input.metadata },
          o,
        ),
      input,
      options,
    );
  }

  /**
   * Gives credits that were not paid for, in a new lot of `category`
   * (PROMOTIONAL unless given) that expires at `expireTime` (never when
   * omitted) and is drawn at `priority` (default 50, before top-ups).
   */
  async grant(input: GrantInput, options?: CallOptions): Promise<LotReceipt> {
    const amount = toInt64(input.amount, "amount");
    const expireTime = toTimestamp(input.expireTime, "expireTime");
    const priority = toPriority(input.priority);
    return this.#lotWrite(
      (idempotencyKey, o) =>
        this.raw.grant(
          {
            userId: input.userId,
            amount,
            idempotencyKey,
            reason: input.reason ?? "",
            metadata: input.metadata,
            expireTime,
            priority,
            category: input.category ?? CreditCategory.UNSPECIFIED,
          },
          o,
        ),
      input,
      options,
    );
  }

  /** Reverses all (or `amount`) of what is left of an earlier TOP_UP, USAGE or GRANT. */
  async refund(input: RefundInput, options?: CallOptions): Promise<Receipt> {
    const amount = input.amount === undefined ? undefined : toInt64(input.amount, "amount");
    return this.#write(
      (idempotencyKey, o) =>
        this.raw.refund(
          {
            userId: input.userId,
            transactionId: input.transactionId,
            amount,
            idempotencyKey,
            reason: input.reason ?? "",
            metadata: input.metadata,
          },
          o,
        ),
      input,
      options,
    );
  }

  /** Returns one transaction of a user; rejects with TransactionNotFound when there is none. */
  async getTransaction(userId: string, transactionId: string, options?: CallOptions): Promise<Transaction> {
    const response = await this.#call((o) => this.raw.getTransaction({ userId, transactionId }, o), options);
    return required(response.transaction, "transaction");
  }

  /** One page of a user's history, newest first. */
  async listTransactions(query: PageQuery, options?: CallOptions): Promise<Page> {
    const pageSize = query.pageSize ?? 0;
    if (!Number.isInteger(pageSize)) throw new InvalidInput(`pageSize must be an integer, got ${pageSize}`);
    const request = {
      userId: query.userId,
      // The server serves anything above 1000 as 1000; clamping keeps it an int32.
      pageSize: Math.min(pageSize, 1000),
      pageToken: query.pageToken ?? "",
      types: query.types ?? [],
      createdAfter: query.createdAfter === undefined ? undefined : timestampFromDate(query.createdAfter),
      createdBefore: query.createdBefore === undefined ? undefined : timestampFromDate(query.createdBefore),
      graphExecId: query.graphExecId ?? "",
      createdBy: query.createdBy ?? "",
    };
    const response = await this.#call((o) => this.raw.listTransactions(request, o), options);
    return {
      transactions: response.transactions,
      nextPageToken: response.nextPageToken === "" ? undefined : response.nextPageToken,
    };
  }

  /**
   * Every matching transaction, newest first, fetching pages as the iterator
   * is read: `for await (const tx of client.iterTransactions({ userId })) ...`.
   */
  async *iterTransactions(query: HistoryQuery, options?: CallOptions): AsyncGenerator<Transaction, void, undefined> {
    let pageToken: string | undefined;
    do {
      const page: Page = await this.listTransactions({ ...query, pageToken }, options);
      yield* page.transactions;
      if (page.nextPageToken !== undefined && page.nextPageToken === pageToken) {
        // A server that hands back the token it was given would loop forever.
        throw new InvalidResponse("the server returned the page token it was given");
      }
      pageToken = page.nextPageToken;
    } while (pageToken !== undefined);
  }

  async #holdWrite(
    send: (
      idempotencyKey: string,
      options: { timeoutMs: number; signal?: AbortSignal; headers: Record<string, string> },
    ) => Promise<ReserveResponse | CaptureResponse | ReleaseResponse>,
    input: { idempotencyKey?: string },
    options: CallOptions | undefined,
  ): Promise<HoldReceipt> {
    // Made once, before the first attempt: every retry sends the same key.
    const idempotencyKey = input.idempotencyKey ?? newIdempotencyKey();
    const response = await this.#call((o) => send(idempotencyKey, o), options);
    return {
      hold: required(response.hold, "hold"),
      transaction: "transaction" in response ? response.transaction : undefined,
      balance: response.balance,
      available: response.available,
    };
  }

  /**
   * Holds credits for work whose cost is known only afterwards; rejects with
   * InsufficientBalance when the available balance is too small. The hold
   * ends after `ttlMs`, at `expireTime`, or after the server's default TTL.
   */
  async reserve(input: ReserveInput, options?: CallOptions): Promise<HoldReceipt> {
    const amount = toInt64(input.amount, "amount");
    if (input.ttlMs !== undefined && input.expireTime !== undefined) {
      throw new InvalidInput("give ttlMs or expireTime, not both");
    }
    if (input.ttlMs !== undefined && !Number.isSafeInteger(input.ttlMs)) {
      throw new InvalidInput(`ttlMs must be a whole number of ms, got ${input.ttlMs}`);
    }
    const expiry =
      input.ttlMs !== undefined
        ? { case: "ttl" as const, value: durationFromMs(input.ttlMs) }
        : input.expireTime !== undefined
          ? { case: "expireTime" as const, value: timestampFromDate(input.expireTime) }
          : { case: undefined };
    return this.#holdWrite(
      (idempotencyKey, o) =>
        this.raw.reserve(
          { userId: input.userId, amount, idempotencyKey, expiry, usage: input.usage, metadata: input.metadata },
          o,
        ),
      input,
      options,
    );
  }

  /**
   * Settles an active hold with the real cost: one USAGE transaction, the
   * rest released (0 releases it all). Rejects with HoldNotFound,
   * HoldNotActive, HoldExpired or InsufficientBalance.
   */
  async capture(input: CaptureInput, options?: CallOptions): Promise<HoldReceipt> {
    const amount = toInt64(input.amount, "amount");
    return this.#holdWrite(
      (idempotencyKey, o) =>
        this.raw.capture(
          {
            userId: input.userId,
            holdId: input.holdId,
            amount,
            idempotencyKey,
            usage: input.usage,
            metadata: input.metadata,
          },
          o,
        ),
      input,
      options,
    );
  }

  /** Gives all of an active hold back; rejects with HoldNotFound, HoldNotActive or HoldExpired. */
  async release(input: ReleaseInput, options?: CallOptions): Promise<HoldReceipt> {
    return this.#holdWrite(
      (idempotencyKey, o) =>
        this.raw.release(
          { userId: input.userId, holdId: input.holdId, idempotencyKey, reason: input.reason ?? "" },
          o,
        ),
      input,
      options,
    );
  }

  /** Returns one hold of a user; rejects with HoldNotFound when there is none. */
  async getHold(userId: string, holdId: string, options?: CallOptions): Promise<Hold> {
    const response = await this.#call((o) => this.raw.getHold({ userId, holdId }, o), options);
    return required(response.hold, "hold");
  }

  /** One page of a user's holds, newest first. */
  async listHolds(query: HoldPageQuery, options?: CallOptions): Promise<HoldPage> {
    const pageSize = query.pageSize ?? 0;
    if (!Number.isInteger(pageSize)) throw new InvalidInput(`pageSize must be an integer, got ${pageSize}`);
    const request = {
      userId: query.userId,
      states: query.states ?? [],
      pageSize: Math.min(pageSize, 1000),
      pageToken: query.pageToken ?? "",
    };
    const response = await this.#call((o) => this.raw.listHolds(request, o), options);
    return {
      holds: response.holds,
      nextPageToken: response.nextPageToken === "" ? undefined : response.nextPageToken,
    };
  }

  /** Every matching hold, newest first, fetching pages as the iterator is read. */
  async *iterHolds(query: HoldQuery, options?: CallOptions): AsyncGenerator<Hold, void, undefined> {
    let pageToken: string | undefined;
    do {
      const page: HoldPage = await this.listHolds({ ...query, pageToken }, options);
      yield* page.holds;
      if (page.nextPageToken !== undefined && page.nextPageToken === pageToken) {
        throw new InvalidResponse("the server returned the page token it was given");
      }
      pageToken = page.nextPageToken;
    } while (pageToken !== undefined);
  }

  /**
   * One page of a user's lots in draw order: priority (lower first), then
   * soonest expiry (never-expiring last), then oldest. Only lots with credits
   * left unless `includeEmpty`. A page may hold fewer lots than `pageSize`
   * and still have a nextPageToken; {@link iterLots} follows the tokens.
   */
  async listLots(query: LotPageQuery, options?: CallOptions): Promise<LotPage> {
    const pageSize = query.pageSize ?? 0;
    if (!Number.isInteger(pageSize)) throw new InvalidInput(`pageSize must be an integer, got ${pageSize}`);
    const request = {
      userId: query.userId,
      includeEmpty: query.includeEmpty ?? false,
      pageSize: Math.min(pageSize, 1000),
      pageToken: query.pageToken ?? "",
    };
    const response = await this.#call((o) => this.raw.listLots(request, o), options);
    return {
      lots: response.lots,
      nextPageToken: response.nextPageToken === "" ? undefined : response.nextPageToken,
    };
  }

  /** Every matching lot, in draw order, fetching pages as the iterator is read until the token is empty. */
  async *iterLots(query: LotQuery, options?: CallOptions): AsyncGenerator<Lot, void, undefined> {
    let pageToken: string | undefined;
    do {
      const page: LotPage = await this.listLots({ ...query, pageToken }, options);
      yield* page.lots;
      if (page.nextPageToken !== undefined && page.nextPageToken === pageToken) {
        throw new InvalidResponse("the server returned the page token it was given");
      }
      pageToken = page.nextPageToken;
    } while (pageToken !== undefined);
  }

  /**
   * Sets a low-balance alert: when a write takes the user's balance from
   * `threshold` or more to below it, the ledger records one AlertEvent with
   * that write (once per downward crossing; the alert re-arms when the
   * balance is back at or above the threshold). The alert is `armed` from
   * the start when the balance is at or above the threshold. Setting a
   * threshold an alert in force already has returns that alert. Rejects with
   * UserNotFound, InvalidArgument (field `threshold`, below 0),
   * IdempotencyKeyReused (the key was used with another threshold) or
   * TooManyAlerts (`limit`). Needs the `service` role.
   */
  async setBalanceAlert(userId: string, threshold: Amount, options?: SetBalanceAlertOptions): Promise<BalanceAlert> {
    const value = toInt64(threshold, "threshold");
    // Made once, before the first attempt: every retry sends the same key.
    const idempotencyKey = options?.idempotencyKey ?? newIdempotencyKey();
    const response = await this.#call(
      (o) => this.raw.setBalanceAlert({ userId, threshold: value, idempotencyKey }, o),
      options,
    );
    return required(response.alert, "alert");
  }

  /**
   * Removes a balance alert and returns it with `deletedAt` set; removing it
   * again returns the same. Rejects with AlertNotFound (or UserNotFound).
   * Needs the `service` role.
   */
  async deleteBalanceAlert(userId: string, alertId: string, options?: CallOptions): Promise<BalanceAlert> {
    const response = await this.#call((o) => this.raw.deleteBalanceAlert({ userId, alertId }, o), options);
    return required(response.alert, "alert");
  }

  /** One page of a user's alert events, newest first (`reader` role). */
  async listAlertEvents(userId: string, query: AlertEventPageQuery = {}, options?: CallOptions): Promise<AlertEventPage> {
    const pageSize = query.pageSize ?? 0;
    if (!Number.isInteger(pageSize)) throw new InvalidInput(`pageSize must be an integer, got ${pageSize}`);
    const request = { userId, pageSize: Math.min(pageSize, 1000), pageToken: query.pageToken ?? "" };
    const response = await this.#call((o) => this.raw.listAlertEvents(request, o), options);
    return {
      events: response.events,
      nextPageToken: response.nextPageToken === "" ? undefined : response.nextPageToken,
    };
  }

  /**
   * Every alert event of a user, newest first, fetching pages as the
   * iterator is read: `for await (const event of client.iterAlertEvents(userId)) ...`.
   */
  async *iterAlertEvents(
    userId: string,
    query: { pageSize?: number } = {},
    options?: CallOptions,
  ): AsyncGenerator<AlertEvent, void, undefined> {
    let pageToken: string | undefined;
    do {
      const page: AlertEventPage = await this.listAlertEvents(userId, { pageSize: query.pageSize, pageToken }, options);
      yield* page.events;
      if (page.nextPageToken !== undefined && page.nextPageToken === pageToken) {
        throw new InvalidResponse("the server returned the page token it was given");
      }
      pageToken = page.nextPageToken;
    } while (pageToken !== undefined);
  }

  /**
   * Opens a stream again and again while {@link resumable} says so: yields
   * what `convert` makes of each message (nothing when it returns
   * undefined), waits between connections by the retry policy, and cancels
   * the call when the consumer stops early or `options.signal` aborts.
   */
  async *#watch<M, T>(
    open: (options: { signal: AbortSignal; headers: Record<string, string> }) => AsyncIterable<M>,
    convert: (message: M, firstOfConnection: boolean) => T | undefined,
    options: WatchOptions,
  ): AsyncGenerator<T, void, undefined> {
    const policy = options.retry === undefined ? this.retryPolicy : resolveRetryPolicy({ ...this.retryPolicy, ...options.retry });
    const resume = options.resume ?? true;
    const signal = options.signal;
    const headers: Record<string, string> = { ...options.headers };
    if (this.#authorization !== undefined) headers["authorization"] = this.#authorization;
    // Connections in a row that ended without a message (the one that had
    // messages and then broke counts as the first).
    let failures = 0;
    for (;;) {
      if (signal?.aborted) throw toCreditError(signal.reason);
      const call = new AbortController();
      const onAbort = () => call.abort(signal?.reason);
      signal?.addEventListener("abort", onAbort, { once: true });
      let ended: CreditError | undefined; // undefined: the server ended the stream without an error
      const messages = open({ signal: call.signal, headers })[Symbol.asyncIterator]();
      let done = false;
      try {
        for (let first = true; ; first = false) {
          let next: IteratorResult<M>;
          try {
            next = await messages.next();
          } catch (reason) {
            ended = toCreditError(reason);
            done = true;
            break;
          }
          if (next.done === true) {
            done = true;
            break;
          }
          failures = 0;
          const item = convert(next.value, first);
          if (item !== undefined) yield item;
        }
      } finally {
        signal?.removeEventListener("abort", onAbort);
        if (!done) {
          // The consumer stopped early (break, return, throw): cancel the call.
          call.abort();
          try {
            await messages.return?.();
          } catch {
            // Canceled: nothing to report.
          }
        }
      }
      if (signal?.aborted) throw ended ?? toCreditError(signal.reason);
      if (!resume || (ended !== undefined && !resumable(ended))) {
        if (ended !== undefined) throw ended;
        return;
      }
      failures += 1;
      if (failures >= policy.maxAttempts) {
        throw ended ?? new Unavailable({
          code: Code.Unavailable,
          message: `the stream ended ${failures} times in a row without a message`,
        });
      }
      try {
        await sleep(backoffMs(policy, failures), signal);
      } catch (aborted) {
        throw toCreditError(aborted);
      }
    }
  }

  /**
   * Streams committed transactions, in feed order, as they happen: of one
   * user (reader role), or of every user when `userId` is omitted (admin
   * role). Starts right after `startAfter` (a message's cursor), or from now.
   * Heartbeats (a cursor and no transaction) come every few seconds when
   * nothing happens. With `content`, balance alert events come too (or
   * only): messages with `alertEvent` set and no transaction. Reconnects by itself (see {@link WatchOptions.resume})
   * from the cursor of the last message yielded, so every transaction comes
   * exactly once; breaking out of the loop ends the stream:
   * `for await (const { transaction, cursor } of client.watchTransactions({ userId })) ...`.
   */
  watchTransactions(options: WatchTransactionsOptions = {}): AsyncGenerator<FeedMessage, void, undefined> {
    const userId = options.userId ?? "";
    const types = [...(options.types ?? [])];
    const content = options.content ?? FeedContent.UNSPECIFIED;
    // Where to resume: the cursor of the last message yielded.
    let startAfter = options.startAfter ?? "";
    return this.#watch(
      (o) => this.raw.watchTransactions({ userId, startAfter, types, content }, o),
      (message) => {
        if (message.cursor === "") throw new InvalidResponse("the server sent a feed message without a cursor");
        startAfter = message.cursor;
        const item: FeedMessage = { cursor: message.cursor };
        if (message.transaction !== undefined) item.transaction = message.transaction;
        if (message.alertEvent !== undefined) item.alertEvent = message.alertEvent;
        return item;
      },
      options,
    );
  }

  /**
   * Streams a user's balance (what {@link getBalance} returns): the current
   * value first, then one per change (changes close together may come as
   * one; the last value always matches the latest committed balance).
   * Reconnects by itself (see {@link WatchOptions.resume}); after a
   * reconnect the current value comes again unless it equals the last one
   * yielded. Rejects with UserNotFound for an unknown user.
   */
  watchBalance(userId: string, options: WatchOptions = {}): AsyncGenerator<Balance, void, undefined> {
    let last: Balance | undefined;
    return this.#watch(
      (o) => this.raw.watchBalance({ userId }, o),
      (message, firstOfConnection) => {
        const balance = required(message.balance, "balance");
        // A reconnect starts with the current value: skip it when nothing changed.
        if (firstOfConnection && last !== undefined && equals(GetBalanceResponseSchema, last, balance)) {
          return undefined;
        }
        last = balance;
        return balance;
      },
      options,
    );
  }

  /** Checks the ledger's invariants for one user, or every user when omitted (admin only). */
  async verifyLedger(userId = "", options?: CallOptions): Promise<VerifyLedgerResponse> {
    return this.#call((o) => this.raw.verifyLedger({ userId }, o), options);
  }
}
