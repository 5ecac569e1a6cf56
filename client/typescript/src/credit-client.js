// @ts-check
/**
 * A small Node.js client for the credit.v1 CreditService.
 *
 *   import { CreditClient, InsufficientBalance } from './src/credit-client.js';
 *   const credits = new CreditClient('127.0.0.1:50051');
 *   await credits.createUser({ userId: 'alice', email: 'alice@example.com' });
 *   await credits.topUp('alice', 100);
 *   try { await credits.spend('alice', 500); }
 *   catch (err) { if (err instanceof InsufficientBalance) console.log(err.availableBalance); }
 *   credits.close();
 *
 * The proto is loaded at runtime from proto/credit/v1/credit.proto with
 * camelCase field names (userId, runningBalance, ...), enums as their names,
 * and int64 values as decimal strings (as in the proto3 JSON mapping), so no
 * amount loses precision. Every write carries an idempotency key (one is made
 * per call when none is given), so UNAVAILABLE and ABORTED are retried with the
 * same key and the server applies the write at most once.
 */
import { randomUUID } from 'node:crypto';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';

import grpc from '@grpc/grpc-js';
import protoLoader from '@grpc/proto-loader';

import { toCreditError } from './errors.js';

export {
  CreditError, IdempotencyKeyReused, InsufficientBalance, InvalidArgument, NotFound, decodeStatusDetails,
} from './errors.js';

const PROTO_DIR = process.env.CREDIT_PROTO_DIR
  ?? path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../proto');

/** The options every caller of credit.proto in this package uses. */
export const LOADER_OPTIONS = Object.freeze({
  keepCase: false,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
  includeDirs: [PROTO_DIR],
});

const definition = protoLoader.loadSync('credit/v1/credit.proto', { ...LOADER_OPTIONS });
const { CreditService } = /** @type {any} */ (grpc.loadPackageDefinition(definition)).credit.v1;
const RETRYABLE = new Set([grpc.status.UNAVAILABLE, grpc.status.ABORTED]);

/**
 * A plain object (JSON values) as a google.protobuf.Struct.
 * @param {Record<string, unknown> | undefined} object
 */
export function toStruct(object) {
  if (object == null) return null;
  return { fields: Object.fromEntries(Object.entries(object).map(([k, v]) => [k, toValue(v)])) };
}

/** @param {unknown} v @returns {object} */
function toValue(v) {
  if (v === null || v === undefined) return { nullValue: 'NULL_VALUE' };
  if (typeof v === 'number') return { numberValue: v };
  if (typeof v === 'string') return { stringValue: v };
  if (typeof v === 'boolean') return { boolValue: v };
  if (Array.isArray(v)) return { listValue: { values: v.map(toValue) } };
  if (typeof v === 'object') return { structValue: toStruct(/** @type {any} */ (v)) };
  throw new TypeError(`cannot put a ${typeof v} into google.protobuf.Struct`);
}

/**
 * A google.protobuf.Struct (as proto-loader decodes it) as a plain object.
 * @param {any} struct
 * @returns {Record<string, unknown> | null}
 */
export function fromStruct(struct) {
  if (struct == null) return null;
  return Object.fromEntries(Object.entries(struct.fields ?? {}).map(([k, v]) => [k, fromValue(v)]));
}

/** @param {any} v @returns {unknown} */
function fromValue(v) {
  switch (v?.kind) {
    case 'numberValue': return v.numberValue;
    case 'stringValue': return v.stringValue;
    case 'boolValue': return v.boolValue;
    case 'structValue': return fromStruct(v.structValue);
    case 'listValue': return (v.listValue.values ?? []).map(fromValue);
    default: return null;
  }
}

/** Metadata of a transaction as a plain object (or null), instead of a Struct. */
function withPlainMetadata(/** @type {any} */ tx) {
  return tx ? { ...tx, metadata: fromStruct(tx.metadata) } : tx;
}

/** A write's response with its transaction's metadata made plain. */
function plainWrite(/** @type {any} */ reply) {
  return { ...reply, transaction: withPlainMetadata(reply.transaction) };
}

export class CreditClient {
  /**
   * @param {string} [target] "host:port"
   * @param {object} [options]
   * @param {number} [options.timeoutMs] deadline of each attempt
   * @param {number} [options.maxAttempts] tries of a call that fails with UNAVAILABLE or ABORTED
   * @param {grpc.ChannelCredentials} [options.credentials] plaintext when omitted
   * @param {grpc.Interceptor[]} [options.interceptors]
   */
  constructor(target = '127.0.0.1:50051', {
    timeoutMs = 5000, maxAttempts = 3, credentials = grpc.credentials.createInsecure(), interceptors = [],
  } = {}) {
    if (maxAttempts < 1) throw new RangeError('maxAttempts must be at least 1');
    this.stub = new CreditService(target, credentials, { interceptors });
    this.timeoutMs = timeoutMs;
    this.maxAttempts = maxAttempts;
  }

  close() {
    this.stub.close();
  }

  /**
   * Calls one RPC, retrying retryable failures with the very same request
   * (and so the same idempotency key).
   * @param {string} method
   * @param {object} request
   * @returns {Promise<any>}
   */
  async call(method, request) {
    for (let attempt = 1; ; attempt += 1) {
      try {
        return await new Promise((resolve, reject) => {
          const deadline = new Date(Date.now() + this.timeoutMs);
          this.stub[method](request, { deadline }, (/** @type {any} */ err, /** @type {any} */ reply) => (
            err ? reject(err) : resolve(reply)));
        });
      } catch (err) {
        if (attempt < this.maxAttempts && RETRYABLE.has(/** @type {any} */ (err).code)) {
          await sleep(50 * 2 ** (attempt - 1));
          continue;
        }
        throw toCreditError(err);
      }
    }
  }

  /** Creates a user (or returns the existing one with the same email). */
  async createUser(/** @type {{userId: string, email: string, name?: string}} */ { userId, email, name = '' }) {
    return (await this.call('CreateUser', { userId, email, name })).user;
  }

  async getUser(/** @type {string} */ userId) {
    return (await this.call('GetUser', { userId })).user;
  }

  /** The balance reply: { userId, balance, updatedAt, lastSequence } (balance a decimal string). */
  async getBalance(/** @type {string} */ userId) {
    return this.call('GetBalance', { userId });
  }

  /**
   * Adds purchased credits; resolves to { transaction, balance }.
   * @param {string} userId
   * @param {number | bigint | string} amount
   * @param {{idempotencyKey?: string, metadata?: Record<string, unknown>}} [options]
   */
  async topUp(userId, amount, { idempotencyKey = randomUUID(), metadata } = {}) {
    const request = { userId, amount: String(amount), idempotencyKey, metadata: toStruct(metadata) };
    return plainWrite(await this.call('TopUp', request));
  }

  /**
   * Takes credits; rejects with InsufficientBalance when the balance is too low.
   * @param {string} userId
   * @param {number | bigint | string} amount
   * @param {{idempotencyKey?: string, usage?: Record<string, string>, metadata?: Record<string, unknown>}} [options]
   */
  async spend(userId, amount, { idempotencyKey = randomUUID(), usage, metadata } = {}) {
    const request = {
      userId, amount: String(amount), idempotencyKey, usage: usage ?? null, metadata: toStruct(metadata),
    };
    return plainWrite(await this.call('Spend', request));
  }

  /**
   * Gives credits that were not paid for.
   * @param {string} userId
   * @param {number | bigint | string} amount
   * @param {{reason?: string, idempotencyKey?: string, metadata?: Record<string, unknown>}} [options]
   */
  async grant(userId, amount, { reason = '', idempotencyKey = randomUUID(), metadata } = {}) {
    const request = { userId, amount: String(amount), reason, idempotencyKey, metadata: toStruct(metadata) };
    return plainWrite(await this.call('Grant', request));
  }

  /**
   * Reverses `amount` credits (default: all not yet refunded) of a transaction.
   * @param {string} userId
   * @param {string} transactionId
   * @param {{amount?: number | bigint | string, reason?: string, idempotencyKey?: string,
   *   metadata?: Record<string, unknown>}} [options]
   */
  async refund(userId, transactionId, { amount, reason = '', idempotencyKey = randomUUID(), metadata } = {}) {
    const request = {
      userId, transactionId, reason, idempotencyKey, metadata: toStruct(metadata),
      ...(amount === undefined ? {} : { amount: String(amount) }),
    };
    return plainWrite(await this.call('Refund', request));
  }

  async getTransaction(/** @type {string} */ userId, /** @type {string} */ transactionId) {
    return withPlainMetadata((await this.call('GetTransaction', { userId, transactionId })).transaction);
  }

  /**
   * One page of the user's history, newest first: { transactions, nextPageToken }.
   * @param {string} userId
   * @param {{pageSize?: number, pageToken?: string, types?: string[]}} [options]
   */
  async listTransactions(userId, { pageSize = 0, pageToken = '', types = [] } = {}) {
    const page = await this.call('ListTransactions', { userId, pageSize, pageToken, types });
    return { ...page, transactions: page.transactions.map(withPlainMetadata) };
  }

  /**
   * The user's whole history, newest first, fetched page by page.
   * @param {string} userId
   * @param {{pageSize?: number, types?: string[]}} [options]
   */
  async* iterTransactions(userId, { pageSize = 0, types = [] } = {}) {
    let pageToken = '';
    do {
      const page = await this.listTransactions(userId, { pageSize, pageToken, types });
      yield* page.transactions;
      pageToken = page.nextPageToken;
    } while (pageToken);
  }
}
