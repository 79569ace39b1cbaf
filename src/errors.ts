/** A problem the user can fix (bad flag, missing file, no /dev/kvm): printed as one line, no stack trace. */
export class UserError extends Error {
  override name = 'UserError';
}
