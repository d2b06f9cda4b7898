/**
 * Whether JSON text nests arrays and objects more than `limit` levels deep, found by one scan
 * that skips strings, without parsing: JSON.parse takes very deep nesting, but JSON.stringify
 * and every recursive reader after it (the function's own parser) overflow their stacks.
 * Text that is not JSON is judged the same way; the parser refuses it afterwards.
 */
export function nestedDeeperThan(text: string, limit: number): boolean {
  let depth = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 0x5c)
        i++; // backslash: the next character is escaped
      else if (c === 0x22) inString = false;
    } else if (c === 0x22) {
      inString = true;
    } else if (c === 0x5b || c === 0x7b) {
      if (++depth > limit) return true;
    } else if (c === 0x5d || c === 0x7d) {
      depth--;
    }
  }
  return false;
}
