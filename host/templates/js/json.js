// Reads JSON text the way `JSON.parse` does, except that an integer literal beyond
// `Number.MAX_SAFE_INTEGER` (2^53 - 1) reads as an exact `BigInt` where `JSON.parse` would
// round it. Event payloads are JSON text, and an `s64` amount or id can exceed 2^53.
//
// Only integer literals (no `.`, no exponent) become BigInt: `1.5` and `1e20` stay numbers.
// The text is checked by `JSON.parse` first, so malformed text throws the same `SyntaxError`.
// (The componentize-js engine also passes `context.source` to a `JSON.parse` reviver, which
// would do this in one line, but Node.js 20, where the tests may run, does not.)

/** Parses `text` as JSON, with integers beyond 2^53 as `BigInt`. */
export function readJson(text) {
  const value = JSON.parse(text);
  // An unsafe integer has at least 16 digits: without such a run the answer is already exact.
  if (!/\d{16}/.test(text)) {
    return value;
  }
  const reader = new Reader(text);
  return reader.value();
}

const WHITESPACE = /[ \t\n\r]*/y;
const STRING = /"(?:[^"\\]|\\.)*"/y;
const NUMBER = /-?\d+(\.\d+)?([eE][+-]?\d+)?/y;

/** Walks text that `JSON.parse` accepted, so it needs no error handling of its own. */
class Reader {
  constructor(text) {
    this.text = text;
    this.at = 0;
  }

  value() {
    const first = this.peek();
    if (first === "{") {
      return this.object();
    }
    if (first === "[") {
      return this.array();
    }
    if (first === '"') {
      return JSON.parse(this.skip(STRING));
    }
    for (const [word, value] of [["true", true], ["false", false], ["null", null]]) {
      if (this.text.startsWith(word, this.at)) {
        this.at += word.length;
        return value;
      }
    }
    const literal = this.skip(NUMBER);
    const number = Number(literal);
    const integer = /^-?\d+$/.test(literal);
    return integer && !Number.isSafeInteger(number) ? BigInt(literal) : number;
  }

  object() {
    const object = {};
    this.at += 1; // the `{`
    while (this.peek() !== "}") {
      const key = JSON.parse(this.skip(STRING));
      this.peek();
      this.at += 1; // the `:`
      // Defined, not assigned: a `__proto__` key is an own property, as with `JSON.parse`.
      Object.defineProperty(object, key, { value: this.value(), enumerable: true, writable: true, configurable: true });
      if (this.peek() === ",") {
        this.at += 1;
      }
    }
    this.at += 1; // the `}`
    return object;
  }

  array() {
    const array = [];
    this.at += 1; // the `[`
    while (this.peek() !== "]") {
      array.push(this.value());
      if (this.peek() === ",") {
        this.at += 1;
      }
    }
    this.at += 1; // the `]`
    return array;
  }

  /** Skips whitespace and returns the next character. */
  peek() {
    this.skip(WHITESPACE);
    return this.text[this.at];
  }

  /** Matches the sticky `pattern` here, steps over the match and returns it. */
  skip(pattern) {
    pattern.lastIndex = this.at;
    const [match] = pattern.exec(this.text);
    this.at += match.length;
    return match;
  }
}
