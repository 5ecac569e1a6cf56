/**
 * Typed errors. Every failed call rejects with a {@link CreditError}; the
 * subclass is chosen by the `google.rpc.ErrorInfo` reason the server puts in
 * the `grpc-status-details-bin` trailer (domain "credit.v1"), never by the
 * message text, which is for people and may change. A status without the
 * credit service's ErrorInfo (from the transport, a proxy, the key check)
 * gets a class picked by its gRPC code; an ErrorInfo reason this client does
 * not know gives the base class.
 *
 * Numbers in the ErrorInfo metadata (balances, amounts) are exposed as
 * `bigint`, like every int64 of the API.
 */
import { fromBinary } from "@bufbuild/protobuf";
import { anyUnpack } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";

import { BadRequestSchema, ErrorInfoSchema } from "./gen/google/rpc/error_details_pb.js";
import type { BadRequest, ErrorInfo } from "./gen/google/rpc/error_details_pb.js";
import { StatusSchema } from "./gen/google/rpc/status_pb.js";
import type { Status } from "./gen/google/rpc/status_pb.js";

export { Code };

/** The `ErrorInfo.domain` of every error the credit service returns. */
export const ERROR_DOMAIN = "credit.v1";

/** The codes a call is retried on: the attempt may succeed when sent again unchanged. */
const RETRYABLE_CODES: ReadonlySet<Code> = new Set([
  Code.Unavailable,
  Code.Aborted,
  Code.ResourceExhausted,
  Code.DeadlineExceeded,
]);

/** Whether a failed attempt with this gRPC code may succeed when sent again unchanged. */
export function isRetryableCode(code: Code): boolean {
  return RETRYABLE_CODES.has(code);
}

/** One invalid request field, as the server's `google.rpc.BadRequest` names it. */
export interface FieldViolation {
  /** The field's path, e.g. `amount` or `page_size`. */
  readonly field: string;
  /** What is wrong with it. */
  readonly description: string;
}

/** What a {@link CreditError} is made from. */
export interface CreditErrorInit {
  /** The gRPC status code. */
  code: Code;
  /** The status message (for people). */
  message: string;
  /** The ErrorInfo reason, e.g. `INSUFFICIENT_BALANCE`; empty without one. */
  reason?: string;
  /** The ErrorInfo domain, `credit.v1`; empty without one. */
  domain?: string;
  /** The ErrorInfo metadata. */
  metadata?: Record<string, string>;
  /** The BadRequest field violations. */
  fieldViolations?: FieldViolation[];
  /** The error this one was made from (a ConnectError). */
  cause?: unknown;
}

/** The gRPC name of a code, e.g. `FAILED_PRECONDITION`. */
export function codeName(code: Code): string {
  const name = Code[code] as string | undefined;
  return name === undefined ? String(code) : name.replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

/** Every failed call: the gRPC status plus its ErrorInfo and BadRequest details. */
export class CreditError extends Error {
  /** The gRPC status code (`Code.FailedPrecondition` is 9, as in gRPC). */
  readonly code: Code;
  /** The ErrorInfo reason, e.g. `INSUFFICIENT_BALANCE`; empty when the status had none. */
  readonly reason: string;
  /** The ErrorInfo domain (`credit.v1`); empty when the status had none. */
  readonly domain: string;
  /** The ErrorInfo metadata, e.g. `{ availableBalance: "70", requestedAmount: "500" }`. */
  readonly metadata: Readonly<Record<string, string>>;
  /** The invalid fields (google.rpc.BadRequest); empty for other errors. */
  readonly fieldViolations: readonly FieldViolation[];

  constructor(init: CreditErrorInit) {
    super(init.message, init.cause === undefined ? undefined : { cause: init.cause });
    this.name = new.target.name;
    this.code = init.code;
    this.reason = init.reason ?? "";
    this.domain = init.domain ?? "";
    this.metadata = Object.freeze({ ...init.metadata });
    this.fieldViolations = Object.freeze([...(init.fieldViolations ?? [])]);
  }

  /** The gRPC name of {@link CreditError.code}, e.g. `FAILED_PRECONDITION`. */
  get codeName(): string {
    return codeName(this.code);
  }

  /**
   * Whether sending the same request again later (with the same idempotency
   * key) may succeed. The client has already retried such errors before
   * returning them.
   */
  get retryable(): boolean {
    return isRetryableCode(this.code);
  }

  /** A metadata value as a bigint (metadata carries int64 values as decimal text). */
  protected bigintMeta(key: string): bigint {
    const text = this.metadata[key];
    if (text === undefined || !/^-?\d+$/.test(text)) {
      throw new TypeError(`${this.name}: ErrorInfo metadata ${key} is ${JSON.stringify(text)}, not an integer`);
    }
    return BigInt(text);
  }

  /** A metadata value as a number (for counts and limits, which are small). */
  protected numberMeta(key: string): number {
    const text = this.metadata[key];
    if (text === undefined || !/^\d+$/.test(text) || !Number.isSafeInteger(Number(text))) {
      throw new TypeError(`${this.name}: ErrorInfo metadata ${key} is ${JSON.stringify(text)}, not a count`);
    }
    return Number(text);
  }

  /** A metadata value as text ("" when absent). */
  protected textMeta(key: string): string {
    return this.metadata[key] ?? "";
  }
}

/** INVALID_ARGUMENT: the server rejected the request's fields; see `fieldViolations`. */
export class InvalidArgument extends CreditError {}

/** The caller's input was refused before anything was sent (e.g. an amount that is not an int64). */
export class InvalidInput extends CreditError {
  constructor(message: string) {
    super({ code: Code.InvalidArgument, message });
  }
}

/** The server answered with something the API does not allow (e.g. a write without its transaction). */
export class InvalidResponse extends CreditError {
  constructor(message: string) {
    super({ code: Code.Internal, message });
  }
}

/** BALANCE_OVERFLOW: the change would take the balance outside the int64 range. */
export class BalanceOverflow extends CreditError {
  /** The balance at the time of the request. */
  get balance(): bigint {
    return this.bigintMeta("balance");
  }

  /** The change asked for. */
  get delta(): bigint {
    return this.bigintMeta("delta");
  }
}

/** NOT_FOUND: a user, transaction, hold or balance alert does not exist (see the subclasses). */
export class NotFound extends CreditError {}

/** USER_NOT_FOUND. */
export class UserNotFound extends NotFound {
  /** The user that was looked for. */
  get userId(): string {
    return this.textMeta("userId");
  }
}

/** TRANSACTION_NOT_FOUND. */
export class TransactionNotFound extends NotFound {
  /** The user the transaction was looked for under. */
  get userId(): string {
    return this.textMeta("userId");
  }

  /** The transaction that was looked for. */
  get transactionId(): string {
    return this.textMeta("transactionId");
  }
}

/** ALREADY_EXISTS: a user id or email is taken (see the two subclasses). */
export class AlreadyExists extends CreditError {}

/** USER_ALREADY_EXISTS: a user with this id but another email exists. */
export class UserAlreadyExists extends AlreadyExists {
  /** The taken user id. */
  get userId(): string {
    return this.textMeta("userId");
  }
}

/** EMAIL_ALREADY_EXISTS: another user has this email. */
export class EmailAlreadyExists extends AlreadyExists {
  /** The taken email. */
  get email(): string {
    return this.textMeta("email");
  }
}

/** IDEMPOTENCY_KEY_REUSED: the key was used before for a different request. */
export class IdempotencyKeyReused extends CreditError {
  /** The key. */
  get idempotencyKey(): string {
    return this.textMeta("idempotencyKey");
  }
}

/** INSUFFICIENT_BALANCE: the balance is too small for the spend (or GRANT refund). */
export class InsufficientBalance extends CreditError {
  /** The balance at the time of the request. */
  get availableBalance(): bigint {
    return this.bigintMeta("availableBalance");
  }

  /** The amount asked for. */
  get requestedAmount(): bigint {
    return this.bigintMeta("requestedAmount");
  }
}

/** REFUND_EXCEEDS_ORIGINAL: the refund is larger than what is left of the original. */
export class RefundExceedsOriginal extends CreditError {
  /** The refunded transaction. */
  get transactionId(): string {
    return this.textMeta("transactionId");
  }

  /** What can still be refunded. */
  get refundableAmount(): bigint {
    return this.bigintMeta("refundableAmount");
  }

  /** The amount asked for. */
  get requestedAmount(): bigint {
    return this.bigintMeta("requestedAmount");
  }
}

/** NOT_REFUNDABLE: the transaction's type cannot be refunded (e.g. a refund). */
export class NotRefundable extends CreditError {
  /** The transaction. */
  get transactionId(): string {
    return this.textMeta("transactionId");
  }

  /** Its type as the server names it, e.g. `REFUND`. */
  get transactionType(): string {
    return this.textMeta("transactionType");
  }
}

/** HOLD_NOT_FOUND (NOT_FOUND): the user has no hold with this id. */
export class HoldNotFound extends NotFound {
  /** The user the hold was looked for under. */
  get userId(): string {
    return this.textMeta("userId");
  }

  /** The hold that was looked for. */
  get holdId(): string {
    return this.textMeta("holdId");
  }
}

/** HOLD_NOT_ACTIVE (FAILED_PRECONDITION): the hold was already captured or released. */
export class HoldNotActive extends CreditError {
  /** The hold. */
  get holdId(): string {
    return this.textMeta("holdId");
  }

  /** Its state as the server names it: `CAPTURED` or `RELEASED`. */
  get state(): string {
    return this.textMeta("state");
  }
}

/**
 * HOLD_EXPIRED (FAILED_PRECONDITION): the hold's expire time passed before it
 * was captured or released; its credits are available again.
 */
export class HoldExpired extends CreditError {
  /** The hold. */
  get holdId(): string {
    return this.textMeta("holdId");
  }

  /** When it expired. */
  get expireTime(): Date {
    const time = new Date(this.textMeta("expireTime"));
    if (Number.isNaN(time.getTime())) {
      throw new TypeError(`${this.name}: ErrorInfo metadata expireTime is not a time`);
    }
    return time;
  }
}

/** ALERT_NOT_FOUND (NOT_FOUND): the user has no balance alert with this id. */
export class AlertNotFound extends NotFound {
  /** The alert that was looked for. */
  get alertId(): string {
    return this.textMeta("alertId");
  }
}

/**
 * TOO_MANY_ALERTS (FAILED_PRECONDITION): the user already has as many
 * balance alerts in force as the server allows; delete one first.
 */
export class TooManyAlerts extends CreditError {
  /** How many alerts in force a user may have. */
  get limit(): number {
    return this.numberMeta("limit");
  }
}

/** PERMISSION_DENIED: the credentials do not allow this call. */
export class PermissionDenied extends CreditError {}

/** UNAUTHENTICATED: the server did not accept the API key (or none was given). */
export class Unauthenticated extends CreditError {}

/** OVERLOADED (RESOURCE_EXHAUSTED): the server shed the call at its concurrency limit; retryable. */
export class Overloaded extends CreditError {}

/** DEADLINE_EXCEEDED: no answer within the deadline, on every attempt; retryable. */
export class DeadlineExceeded extends CreditError {}

/** CONFLICT (ABORTED): a concurrent write conflicted, on every attempt; retryable. */
export class Conflict extends CreditError {}

/** UNAVAILABLE: the server could not be reached, on every attempt; retryable. */
export class Unavailable extends CreditError {}

/** DATABASE_UNAVAILABLE (UNAVAILABLE): the server's database could not be reached; retryable. */
export class DatabaseUnavailable extends Unavailable {}

/**
 * SHUTTING_DOWN (UNAVAILABLE): the server is stopping and ended the stream;
 * reconnect (to another process) and resume from the last cursor. The
 * watch methods do that themselves unless `resume: false`.
 */
export class ShuttingDown extends Unavailable {}

/**
 * SLOW_CONSUMER (RESOURCE_EXHAUSTED): the stream was cut off because its
 * consumer read more slowly than the ledger changed; resume from the last
 * cursor. The watch methods do that themselves unless `resume: false`.
 */
export class SlowConsumer extends CreditError {
  /** How long the server waited with a full buffer, in seconds. */
  get waitedSeconds(): number {
    return this.numberMeta("waitedSeconds");
  }
}

/**
 * TOO_MANY_STREAMS (RESOURCE_EXHAUSTED): a stream limit refused a new
 * stream (`--max-streams` per server, `--max-streams-per-key` per API key).
 * Not retried by the watch methods: close a stream, or try later.
 */
export class TooManyStreams extends CreditError {
  /** Which limit: `"streams"` (the server's) or `"streamsPerKey"` (this API key's). */
  get resource(): string {
    return this.textMeta("resource");
  }

  /** The limit's value. */
  get limit(): number {
    return this.numberMeta("limit");
  }
}

/** INTERNAL: the server failed. */
export class Internal extends CreditError {}

type ErrorClass = new (init: CreditErrorInit) => CreditError;

/** The class for each ErrorInfo reason of domain credit.v1. */
export const ERRORS_BY_REASON: Readonly<Record<string, ErrorClass>> = Object.freeze({
  INVALID_ARGUMENT: InvalidArgument,
  BALANCE_OVERFLOW: BalanceOverflow,
  USER_NOT_FOUND: UserNotFound,
  TRANSACTION_NOT_FOUND: TransactionNotFound,
  USER_ALREADY_EXISTS: UserAlreadyExists,
  EMAIL_ALREADY_EXISTS: EmailAlreadyExists,
  IDEMPOTENCY_KEY_REUSED: IdempotencyKeyReused,
  INSUFFICIENT_BALANCE: InsufficientBalance,
  REFUND_EXCEEDS_ORIGINAL: RefundExceedsOriginal,
  NOT_REFUNDABLE: NotRefundable,
  HOLD_NOT_FOUND: HoldNotFound,
  HOLD_NOT_ACTIVE: HoldNotActive,
  HOLD_EXPIRED: HoldExpired,
  ALERT_NOT_FOUND: AlertNotFound,
  TOO_MANY_ALERTS: TooManyAlerts,
  PERMISSION_DENIED: PermissionDenied,
  UNAUTHENTICATED: Unauthenticated,
  OVERLOADED: Overloaded,
  DEADLINE_EXCEEDED: DeadlineExceeded,
  CONFLICT: Conflict,
  DATABASE_UNAVAILABLE: DatabaseUnavailable,
  SHUTTING_DOWN: ShuttingDown,
  SLOW_CONSUMER: SlowConsumer,
  TOO_MANY_STREAMS: TooManyStreams,
  INTERNAL: Internal,
});

/** The class for a status without the credit service's ErrorInfo. */
const ERRORS_BY_CODE: ReadonlyMap<Code, ErrorClass> = new Map<Code, ErrorClass>([
  [Code.InvalidArgument, InvalidArgument],
  [Code.NotFound, NotFound],
  [Code.AlreadyExists, AlreadyExists],
  [Code.PermissionDenied, PermissionDenied],
  [Code.Unauthenticated, Unauthenticated],
  [Code.ResourceExhausted, Overloaded],
  [Code.DeadlineExceeded, DeadlineExceeded],
  [Code.Aborted, Conflict],
  [Code.Unavailable, Unavailable],
  [Code.Internal, Internal],
]);

/** The details of a google.rpc.Status that this client reads. */
export interface StatusDetails {
  readonly code: Code;
  readonly message: string;
  readonly errorInfo?: ErrorInfo;
  readonly badRequest?: BadRequest;
}

/**
 * Decodes a `grpc-status-details-bin` value (a serialized google.rpc.Status,
 * as bytes or as the base64 text of the header) and unpacks its ErrorInfo and
 * BadRequest.
 */
export function decodeStatusDetails(value: Uint8Array | string): StatusDetails {
  const bytes = typeof value === "string" ? base64Decode(value) : value;
  const status: Status = fromBinary(StatusSchema, bytes);
  let errorInfo: ErrorInfo | undefined;
  let badRequest: BadRequest | undefined;
  for (const any of status.details) {
    errorInfo ??= anyUnpack(any, ErrorInfoSchema);
    badRequest ??= anyUnpack(any, BadRequestSchema);
  }
  return { code: status.code as Code, message: status.message, errorInfo, badRequest };
}

function base64Decode(text: string): Uint8Array {
  // Headers may carry unpadded base64; atob wants padding.
  const padded = text.trim().padEnd(Math.ceil(text.trim().length / 4) * 4, "=");
  const binary = atob(padded);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i += 1) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

/** The ErrorInfo and BadRequest of a ConnectError (parsed by the transport from the trailer). */
function detailsOf(err: ConnectError): { errorInfo?: ErrorInfo; badRequest?: BadRequest } {
  let errorInfo = err.findDetails(ErrorInfoSchema)[0];
  let badRequest = err.findDetails(BadRequestSchema)[0];
  if (errorInfo === undefined && badRequest === undefined) {
    // A transport that left the trailer undecoded: read it ourselves.
    const raw = err.metadata.get("grpc-status-details-bin");
    if (raw) {
      try {
        ({ errorInfo, badRequest } = decodeStatusDetails(raw));
      } catch {
        // Undecodable details: the status code alone decides.
      }
    }
  }
  return { errorInfo, badRequest };
}

/** Turns anything a call threw into a {@link CreditError} of the right class. */
export function toCreditError(reason: unknown): CreditError {
  if (reason instanceof CreditError) return reason;
  const err = ConnectError.from(reason);
  const { errorInfo, badRequest } = detailsOf(err);
  const ours = errorInfo !== undefined && errorInfo.domain === ERROR_DOMAIN ? errorInfo : undefined;
  let Kind: ErrorClass;
  if (ours === undefined) {
    Kind = ERRORS_BY_CODE.get(err.code) ?? CreditError;
  } else {
    Kind = ERRORS_BY_REASON[ours.reason] ?? CreditError;
  }
  return new Kind({
    code: err.code,
    message: err.rawMessage,
    reason: errorInfo?.reason ?? "",
    domain: errorInfo?.domain ?? "",
    metadata: errorInfo?.metadata ?? {},
    fieldViolations: (badRequest?.fieldViolations ?? []).map((v) => ({
      field: v.field,
      description: v.description,
    })),
    cause: err,
  });
}
