// What the tests put in place of the host's imports: `log` records each line it is given.
export const logged = [];

export function log(level, message) {
  logged.push([level, message]);
}
