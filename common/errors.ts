/**
 * Every error Sluice raises on purpose carries a stable `code` (what callers branch on and
 * what JSON error bodies report) and, when it wraps another error, the original `cause`.
 */
export class SluiceError extends Error {
  readonly code: string;

  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

/** A bad setting at start-up: names the flag and its environment twin. */
export class SettingError extends SluiceError {
  readonly setting: string;

  constructor(setting: string, message: string, options?: { cause?: unknown }) {
    super('ERR_SETTING', `invalid setting ${setting}: ${message}`, options);
    this.setting = setting;
  }
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
