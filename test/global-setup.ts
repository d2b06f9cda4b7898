// Placeholder replaced by the control-plane harness (owned by the operator work).
export default function setup(): void {}
