/**
 * Bounds that the API (spec.scaling, spec.map) and `sluice proxy`'s flags share, so a spec the
 * API server accepts always gives flags the proxy accepts. The concurrency cap is what one proxy
 * process can hold (the idle-stream benchmark runs 10,900 slots), not a scheduling choice.
 */
export const MAX_CONCURRENCY = 100_000;
export const MAX_MAP_DELIVER = 100;
/** A map caller's grace to resume (spec.map.cancelAfterDisconnectSeconds): a day at most. */
export const MAX_MAP_CANCEL_AFTER_DISCONNECT = 86_400;
/**
 * Deepest nesting of arrays and objects in a map body (the body object and its inputs array
 * count): far beyond real inputs, well inside what JSON.stringify and Python's json (recursion
 * limit 1,000) handle.
 */
export const MAX_JSON_DEPTH = 256;
