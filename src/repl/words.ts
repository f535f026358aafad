/** Splits a command line into words, honouring '…' and "…" quotes and backslash escapes. */
export function splitWords(line: string): string[] {
  const out: string[] = [];
  let cur = '';
  let inWord = false;
  let quote: string | null = null;
  for (let i = 0; i < line.length; i++) {
    const ch = line[i]!;
    if (quote) {
      if (ch === quote) quote = null;
      else if (ch === '\\' && quote === '"' && i + 1 < line.length) cur += line[++i];
      else cur += ch;
      continue;
    }
    if (ch === "'" || ch === '"') {
      quote = ch;
      inWord = true;
    } else if (ch === '\\' && i + 1 < line.length) {
      cur += line[++i];
      inWord = true;
    } else if (/\s/.test(ch)) {
      if (inWord) out.push(cur);
      cur = '';
      inWord = false;
    } else {
      cur += ch;
      inWord = true;
    }
  }
  if (quote) throw new Error(`unterminated ${quote} quote`);
  if (inWord) out.push(cur);
  return out;
}

export interface ParsedArgs {
  positional: string[];
  options: Record<string, string | boolean>;
  /** The words as given (for commands that parse their own, such as plugin commands). */
  raw: string[];
}

/** Parses words after the command name: --name value, --flag, --name=value. */
export function parseArgs(words: string[], flags: readonly string[] = []): ParsedArgs {
  const positional: string[] = [];
  const options: Record<string, string | boolean> = {};
  for (let i = 0; i < words.length; i++) {
    const w = words[i]!;
    if (w.startsWith('--') && w.length > 2) {
      const eq = w.indexOf('=');
      if (eq > 0) options[w.slice(2, eq)] = w.slice(eq + 1);
      else if (flags.includes(w.slice(2)) || i + 1 >= words.length || words[i + 1]!.startsWith('--'))
        options[w.slice(2)] = true;
      else options[w.slice(2)] = words[++i]!;
    } else positional.push(w);
  }
  return { positional, options, raw: [...words] };
}
