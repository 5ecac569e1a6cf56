// @ts-check
/**
 * Typed errors read from the google.rpc.Status that the server puts in the
 * `grpc-status-details-bin` trailer, decoded with protobufjs from the
 * vendored proto/third_party/google/rpc/*.proto.
 */
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { status as Code } from '@grpc/grpc-js';
import protobuf from 'protobufjs';

const RPC_PROTO_DIR = process.env.CREDIT_RPC_PROTO_DIR
  ?? path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../proto/third_party/google/rpc');

const rpcRoot = protobuf.loadSync([
  path.join(RPC_PROTO_DIR, 'status.proto'),
  path.join(RPC_PROTO_DIR, 'error_details.proto'),
]);
const Status = rpcRoot.lookupType('google.rpc.Status');

/** Every failed call: the gRPC status plus its ErrorInfo and BadRequest details. */
export class CreditError extends Error {
  /**
   * @param {object} fields
   * @param {number} fields.code gRPC status code (see `status` of @grpc/grpc-js)
   * @param {string} fields.message
   * @param {string} [fields.reason] ErrorInfo.reason, e.g. INSUFFICIENT_BALANCE
   * @param {string} [fields.domain] ErrorInfo.domain, "credit.v1"
   * @param {Record<string, string>} [fields.metadata] ErrorInfo.metadata
   * @param {{field: string, description: string}[]} [fields.fieldViolations] BadRequest
   * @param {Error} [fields.cause] the grpc-js error
   */
  constructor({ code, message, reason = '', domain = '', metadata = {}, fieldViolations = [], cause }) {
    super(`${Code[code] ?? code}: ${message}${reason ? ` [${reason}]` : ''}`, { cause });
    this.name = new.target.name;
    this.code = code;
    this.details = message;
    this.reason = reason;
    this.domain = domain;
    this.metadata = metadata;
    this.fieldViolations = fieldViolations;
  }
}

/** Spend (or a refund that takes credits) needs more than the balance holds. */
export class InsufficientBalance extends CreditError {
  /** @returns {bigint} */
  get availableBalance() { return BigInt(this.metadata.availableBalance); }
  /** @returns {bigint} */
  get requestedAmount() { return BigInt(this.metadata.requestedAmount); }
}

/** The idempotency key was already used with different parameters. */
export class IdempotencyKeyReused extends CreditError {}

/** Some request fields are invalid; see fieldViolations. */
export class InvalidArgument extends CreditError {}

/** The user or transaction does not exist. */
export class NotFound extends CreditError {}

/** @type {Record<string, typeof CreditError>} */
const ERRORS_BY_REASON = {
  INSUFFICIENT_BALANCE: InsufficientBalance,
  IDEMPOTENCY_KEY_REUSED: IdempotencyKeyReused,
  INVALID_ARGUMENT: InvalidArgument,
  USER_NOT_FOUND: NotFound,
  TRANSACTION_NOT_FOUND: NotFound,
};

/**
 * Decodes the google.rpc.Status trailer of a failed call, or null without one.
 * Each detail is returned as `{type, value}` with the Any unpacked when its
 * type is known (ErrorInfo, BadRequest, ResourceInfo, ...).
 * @param {import('@grpc/grpc-js').Metadata | undefined} trailers
 */
export function decodeStatusDetails(trailers) {
  const raw = trailers?.get('grpc-status-details-bin')?.[0];
  if (!raw) return null;
  /** @type {any} */
  const status = Status.toObject(Status.decode(/** @type {Buffer} */ (raw)), { defaults: true });
  const details = status.details.map((/** @type {any} */ any) => {
    // protobufjs camel-cases parsed .proto fields, but its bundled
    // google/protobuf/any.proto keeps type_url as written.
    const typeUrl = String(any.type_url ?? any.typeUrl ?? '');
    const type = typeUrl.slice(typeUrl.lastIndexOf('/') + 1);
    const messageType = rpcRoot.lookup(type);
    if (!(messageType instanceof protobuf.Type)) return { type, value: null }; // not a google.rpc type
    return { type, value: messageType.toObject(messageType.decode(any.value), { defaults: true }) };
  });
  return { code: status.code, message: status.message, details };
}

/**
 * Turns a grpc-js ServiceError into a CreditError (subclass chosen by reason).
 * @param {any} err
 * @returns {CreditError}
 */
export function toCreditError(err) {
  let decoded = null;
  try {
    decoded = decodeStatusDetails(err?.metadata);
  } catch {
    // Undecodable details: keep the status line alone.
  }
  const info = decoded?.details.find((d) => d.type === 'google.rpc.ErrorInfo')?.value;
  const badRequest = decoded?.details.find((d) => d.type === 'google.rpc.BadRequest')?.value;
  const Kind = (info && ERRORS_BY_REASON[info.reason]) || CreditError;
  return new Kind({
    code: typeof err?.code === 'number' ? err.code : Code.UNKNOWN,
    message: err?.details ?? String(err),
    reason: info?.reason ?? '',
    domain: info?.domain ?? '',
    metadata: info?.metadata ?? {},
    fieldViolations: (badRequest?.fieldViolations ?? []).map((/** @type {any} */ v) => ({
      field: v.field,
      description: v.description,
    })),
    cause: err,
  });
}
