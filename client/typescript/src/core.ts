/**
 * What both entry points export: the client layer, the errors, the retry
 * policy and the generated credit.v1 and google.rpc types. Imports nothing
 * Node-only.
 */
export * from "./client.js";
export * from "./errors.js";
export * from "./retry.js";
export * from "./gen/credit/v1/credit_pb.js";
export {
  BadRequestSchema,
  BadRequest_FieldViolationSchema,
  ErrorInfoSchema,
  file_google_rpc_error_details,
} from "./gen/google/rpc/error_details_pb.js";
export type { BadRequest, BadRequest_FieldViolation, ErrorInfo } from "./gen/google/rpc/error_details_pb.js";
export { StatusSchema, file_google_rpc_status } from "./gen/google/rpc/status_pb.js";
export type { Status } from "./gen/google/rpc/status_pb.js";
export type { JsonObject, JsonValue } from "@bufbuild/protobuf";
export { timestampDate, timestampFromDate } from "@bufbuild/protobuf/wkt";
export type { Timestamp } from "@bufbuild/protobuf/wkt";
export type { Interceptor, Transport } from "@connectrpc/connect";
