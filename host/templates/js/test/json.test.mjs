// Tests of `readJson` (json.js): `JSON.parse`, with integers beyond 2^53 read exactly.
import assert from "node:assert/strict";
import { test } from "node:test";

import { readJson } from "../json.js";

test("integers beyond 2^53 read as exact BigInts, wherever they are", () => {
  assert.equal(readJson("9007199254740993"), 9007199254740993n);
  assert.deepEqual(readJson('{"amount": 9223372036854775807, "debt": -9223372036854775808}'), {
    amount: 9223372036854775807n,
    debt: -9223372036854775808n,
  });
  assert.deepEqual(readJson('{ "a" : [ 1 , { "b" : [ 12345678901234567890 ] } ] }'), { a: [1, { b: [12345678901234567890n] }] });
  assert.equal(readJson("9007199254740992"), 9007199254740992n, "2^53 is not a safe integer");
});

test("safe integers, fractions and exponents stay numbers", () => {
  assert.deepEqual(readJson("[9007199254740991, -9007199254740991, 0, -0, 1.5, 12345678901234567.0, 1e20]"), [
    9007199254740991,
    -9007199254740991,
    0,
    -0,
    1.5,
    12345678901234567.0,
    1e20,
  ]);
});

test("everything else reads as JSON.parse reads it", () => {
  const texts = [
    "{}",
    " [ ] ",
    '{"name": "Ada", "open": true, "closed": false, "note": null, "tags": ["a", "b"]}',
    '"a string with 12345678901234567890 and \\"quotes\\" and \\u00e9"',
    '{"12345678901234567890": "a key, not a number", "n": [[], {}, [{}]]}',
  ];
  for (const text of texts) {
    assert.deepEqual(readJson(text), JSON.parse(text), text);
  }
  assert.deepEqual(readJson('{"a": 1, "a": 9007199254740993}'), { a: 9007199254740993n }, "the last of a repeated key");
});

test("a __proto__ key is an own property, as with JSON.parse", () => {
  const value = readJson('{"__proto__": {"polluted": 12345678901234567890}}');
  assert.equal(Object.getPrototypeOf(value), Object.prototype);
  assert.deepEqual(Object.keys(value), ["__proto__"]);
  assert.equal({}.polluted, undefined);
});

test("malformed text throws JSON.parse's SyntaxError", () => {
  for (const text of ["", "{", '{"a": 12345678901234567890,}', "[1 2]", "01"]) {
    assert.throws(() => readJson(text), SyntaxError, text);
  }
});
