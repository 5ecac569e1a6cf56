// No server needed: the generated service against the CreditClient layer,
// the retry policy, and errors decoded from a grpc-status-details-bin trailer.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';

import { create, toBinary } from '@bufbuild/protobuf';
import { anyPack } from '@bufbuild/protobuf/wkt';
import { ConnectError } from '@connectrpc/connect';

import * as credit from 'credit-ledger-client';

import { PKG } from './helpers.mjs';

const {
  BadRequestSchema, Code, CreditClient, CreditError, CreditService, DEFAULT_RETRY_POLICY, ErrorInfoSchema, NO_RETRY,
  StatusSchema, backoffCeilingMs, backoffMs, decodeStatusDetails, toCreditError,
} = credit;

test('every RPC of the generated CreditService has a method on CreditClient', () => {
  const proto = readFileSync(path.join(PKG, '../../proto/credit/v1/credit.proto'), 'utf8');
  const declared = [...proto.matchAll(/^\s*rpc\s+(\w+)\s*\(/gm)].map((m) => m[1]);
  assert.ok(declared.length >= 10, `rpcs in credit.proto: ${declared}`);
  assert.deepEqual(CreditService.methods.map((m) => m.name), declared,
    'the generated service has exactly the RPCs of proto/credit/v1/credit.proto');
  const missing = CreditService.methods
    .filter((m) => typeof CreditClient.prototype[m.localName] !== 'function')
    .map((m) => `${m.name} (CreditClient.${m.localName})`);
  assert.deepEqual(missing, [], 'RPCs without a CreditClient method');
});

test('the retry policy: 4 attempts, 100/200/400 ms ceilings, at most 2 s, equal jitter', () => {
  assert.deepEqual({ ...DEFAULT_RETRY_POLICY }, { maxAttempts: 4, initialBackoffMs: 100, maxBackoffMs: 2000, multiplier: 2 });
  assert.equal(NO_RETRY.maxAttempts, 1);
  assert.deepEqual([1, 2, 3, 4, 5, 6, 100].map((n) => backoffCeilingMs(DEFAULT_RETRY_POLICY, n)),
    [100, 200, 400, 800, 1600, 2000, 2000]);
  for (let retry = 1; retry <= 10; retry += 1) {
    const ceiling = backoffCeilingMs(DEFAULT_RETRY_POLICY, retry);
    assert.equal(backoffMs(DEFAULT_RETRY_POLICY, retry, () => 0), ceiling / 2);
    assert.equal(backoffMs(DEFAULT_RETRY_POLICY, retry, () => 1), ceiling);
    const wait = backoffMs(DEFAULT_RETRY_POLICY, retry);
    assert.ok(wait >= ceiling / 2 && wait <= ceiling, `retry ${retry}: ${wait}`);
  }
});

/** A ConnectError as the gRPC transport leaves it: only the raw trailer, no parsed details. */
function statusError(code, reason, metadata = {}, violations = [], domain = 'credit.v1') {
  const details = [];
  if (reason !== undefined) details.push(anyPack(ErrorInfoSchema, create(ErrorInfoSchema, { reason, domain, metadata })));
  if (violations.length > 0) {
    details.push(anyPack(BadRequestSchema, create(BadRequestSchema, { fieldViolations: violations })));
  }
  const bytes = toBinary(StatusSchema, create(StatusSchema, { code, message: `msg ${reason}`, details }));
  const trailer = Buffer.from(bytes).toString('base64').replace(/=+$/, '');
  return new ConnectError(`msg ${reason}`, code, { 'grpc-status-details-bin': trailer });
}

test('each ErrorInfo reason gets its own class', () => {
  const cases = [
    ['INVALID_ARGUMENT', Code.InvalidArgument, credit.InvalidArgument],
    ['BALANCE_OVERFLOW', Code.InvalidArgument, credit.BalanceOverflow],
    ['USER_NOT_FOUND', Code.NotFound, credit.UserNotFound],
    ['TRANSACTION_NOT_FOUND', Code.NotFound, credit.TransactionNotFound],
    ['USER_ALREADY_EXISTS', Code.AlreadyExists, credit.UserAlreadyExists],
    ['EMAIL_ALREADY_EXISTS', Code.AlreadyExists, credit.EmailAlreadyExists],
    ['IDEMPOTENCY_KEY_REUSED', Code.AlreadyExists, credit.IdempotencyKeyReused],
    ['INSUFFICIENT_BALANCE', Code.FailedPrecondition, credit.InsufficientBalance],
    ['REFUND_EXCEEDS_ORIGINAL', Code.FailedPrecondition, credit.RefundExceedsOriginal],
    ['NOT_REFUNDABLE', Code.FailedPrecondition, credit.NotRefundable],
    ['HOLD_NOT_FOUND', Code.NotFound, credit.HoldNotFound],
    ['HOLD_NOT_ACTIVE', Code.FailedPrecondition, credit.HoldNotActive],
    ['HOLD_EXPIRED', Code.FailedPrecondition, credit.HoldExpired],
    ['ALERT_NOT_FOUND', Code.NotFound, credit.AlertNotFound],
    ['TOO_MANY_ALERTS', Code.FailedPrecondition, credit.TooManyAlerts],
    ['PERMISSION_DENIED', Code.PermissionDenied, credit.PermissionDenied],
    ['UNAUTHENTICATED', Code.Unauthenticated, credit.Unauthenticated],
    ['OVERLOADED', Code.ResourceExhausted, credit.Overloaded],
    ['DEADLINE_EXCEEDED', Code.DeadlineExceeded, credit.DeadlineExceeded],
    ['CONFLICT', Code.Aborted, credit.Conflict],
    ['DATABASE_UNAVAILABLE', Code.Unavailable, credit.DatabaseUnavailable],
    ['SHUTTING_DOWN', Code.Unavailable, credit.ShuttingDown],
    ['SLOW_CONSUMER', Code.ResourceExhausted, credit.SlowConsumer],
    ['TOO_MANY_STREAMS', Code.ResourceExhausted, credit.TooManyStreams],
    ['INTERNAL', Code.Internal, credit.Internal],
  ];
  assert.deepEqual(cases.map(([reason]) => reason).sort(), Object.keys(credit.ERRORS_BY_REASON).sort());
  const retryable = new Set([Code.Unavailable, Code.Aborted, Code.ResourceExhausted, Code.DeadlineExceeded]);
  for (const [reason, code, Kind] of cases) {
    const err = toCreditError(statusError(code, reason));
    assert.ok(err instanceof Kind && err instanceof CreditError, `${reason}: got ${err.name}`);
    assert.equal(err.name, Kind.name);
    assert.equal(err.reason, reason);
    assert.equal(err.domain, 'credit.v1');
    assert.equal(err.code, code);
    assert.equal(err.message, `msg ${reason}`);
    assert.equal(err.retryable, retryable.has(code), reason);
    assert.ok(err.cause instanceof ConnectError);
  }
  assert.ok(toCreditError(statusError(Code.Unavailable, 'DATABASE_UNAVAILABLE')) instanceof credit.Unavailable);
  assert.ok(toCreditError(statusError(Code.Unavailable, 'SHUTTING_DOWN')) instanceof credit.Unavailable);
});

test('typed metadata and field violations', () => {
  const insufficient = toCreditError(statusError(Code.FailedPrecondition, 'INSUFFICIENT_BALANCE',
    { availableBalance: '70', requestedAmount: '9223372036854775807' }));
  assert.equal(insufficient.availableBalance, 70n);
  assert.equal(insufficient.requestedAmount, 9223372036854775807n);
  assert.equal(insufficient.codeName, 'FAILED_PRECONDITION');
  const refund = toCreditError(statusError(Code.FailedPrecondition, 'REFUND_EXCEEDS_ORIGINAL',
    { transactionId: 't-1', refundableAmount: '5', requestedAmount: '8' }));
  assert.deepEqual([refund.transactionId, refund.refundableAmount, refund.requestedAmount], ['t-1', 5n, 8n]);
  const overflow = toCreditError(statusError(Code.InvalidArgument, 'BALANCE_OVERFLOW', { balance: '1', delta: '-2' }));
  assert.deepEqual([overflow.balance, overflow.delta], [1n, -2n]);
  const streams = toCreditError(statusError(Code.ResourceExhausted, 'TOO_MANY_STREAMS', { resource: 'streams', limit: '1000' }));
  assert.deepEqual([streams.resource, streams.limit], ['streams', 1000]);
  assert.equal(toCreditError(statusError(Code.ResourceExhausted, 'SLOW_CONSUMER', { waitedSeconds: '10' })).waitedSeconds, 10);
  const alert = toCreditError(statusError(Code.NotFound, 'ALERT_NOT_FOUND', { alertId: 'a-1' }));
  assert.ok(alert instanceof credit.NotFound);
  assert.equal(alert.alertId, 'a-1');
  assert.equal(toCreditError(statusError(Code.FailedPrecondition, 'TOO_MANY_ALERTS', { limit: '20' })).limit, 20);
  const invalid = toCreditError(statusError(Code.InvalidArgument, 'INVALID_ARGUMENT', {},
    [{ field: 'amount', description: 'must be greater than 0' }]));
  assert.deepEqual(invalid.fieldViolations, [{ field: 'amount', description: 'must be greater than 0' }]);
  const decoded = decodeStatusDetails(statusError(Code.NotFound, 'USER_NOT_FOUND', { userId: 'u' })
    .metadata.get('grpc-status-details-bin'));
  assert.equal(decoded.code, Code.NotFound);
  assert.equal(decoded.errorInfo.reason, 'USER_NOT_FOUND');
  assert.deepEqual(decoded.errorInfo.metadata, { userId: 'u' });
});

test('no ErrorInfo: the class follows the code; an unknown reason gives the base class', () => {
  assert.equal(toCreditError(new ConnectError('x', Code.Unavailable)).constructor, credit.Unavailable);
  assert.equal(toCreditError(new ConnectError('x', Code.Unauthenticated)).constructor, credit.Unauthenticated);
  assert.equal(toCreditError(new ConnectError('x', Code.ResourceExhausted)).constructor, credit.Overloaded);
  assert.equal(toCreditError(new ConnectError('x', Code.Aborted)).constructor, credit.Conflict);
  assert.equal(toCreditError(new ConnectError('x', Code.DataLoss)).constructor, CreditError);
  const unknown = toCreditError(statusError(Code.FailedPrecondition, 'SOMETHING_NEW'));
  assert.equal(unknown.constructor, CreditError);
  assert.equal(unknown.reason, 'SOMETHING_NEW');
  const foreign = toCreditError(statusError(Code.FailedPrecondition, 'INSUFFICIENT_BALANCE', {}, [], 'other.domain'));
  assert.equal(foreign.constructor, CreditError, 'another domain\'s reason is not ours');
  assert.equal(toCreditError(new Error('boom')).code, Code.Unknown);
});
