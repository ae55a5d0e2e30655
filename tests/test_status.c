#include <criterion/criterion.h>
#include <string.h>

#include "heed/status.h"
#include "runtime/internal.h"

static const int all[] = {
#define X(name, value, msg) value,
    HEED_STATUS_LIST(X)
#undef X
};

Test(status, ok_is_zero_and_errors_are_negative) {
  cr_assert_eq(HEED_OK, 0);
  for (size_t i = 1; i < sizeof all / sizeof all[0]; i++) cr_assert_lt(all[i], 0, "status %d", all[i]);
}

Test(status, names_and_messages_come_from_the_list) {
  cr_assert_str_eq(heed_status_name(HEED_OK), "HEED_OK");
  cr_assert_str_eq(heed_status_name(HEED_E_INVALID), "HEED_E_INVALID");
  cr_assert_str_eq(heed_status_str(HEED_E_INVALID), "invalid argument");
  cr_assert_str_eq(heed_status_str(HEED_E_BUSY), "busy: re-entrant or concurrent use");
  size_t n = sizeof all / sizeof all[0];
  for (size_t i = 0; i < n; i++) {
    cr_assert(strncmp(heed_status_name(all[i]), "HEED_", 5) == 0);
    cr_assert_str_neq(heed_status_str(all[i]), "unknown status");
    for (size_t j = i + 1; j < n; j++) {
      cr_assert_neq(all[i], all[j], "duplicate value");
      cr_assert_str_neq(heed_status_name(all[i]), heed_status_name(all[j]));
      cr_assert_str_neq(heed_status_str(all[i]), heed_status_str(all[j]));
    }
  }
}

Test(status, unknown_values_are_named_as_such) {
  cr_assert_str_eq(heed_status_name(12345), "HEED_E_UNKNOWN");
  cr_assert_str_eq(heed_status_str(-9999), "unknown status");
  cr_assert_str_eq(heed_status_name(1), "HEED_E_UNKNOWN");
}

/* No text heed builds is cut silently: what does not fit ends in "...", at a
 * UTF-8 character boundary, and the call says so. */
Test(status, a_text_that_does_not_fit_is_marked_cut) {
  char b[8];
  cr_assert_eq(heed_strlcpy(b, "abcdefg", sizeof b), 0);
  cr_assert_str_eq(b, "abcdefg");
  cr_assert_eq(heed_strlcpy(b, "abcdefgh", sizeof b), 1);
  cr_assert_str_eq(b, "abcd...");
  cr_assert_eq(heed_strlcpy(b, "ab\xc3\xa9\xc3\xa9\xc3\xa9", sizeof b), 1); /* ab + three e-acute */
  cr_assert_str_eq(b, "ab\xc3\xa9...", "a character is never split");
  cr_assert_eq(heed_fmt(b, sizeof b, "%d", 1234567), 0);
  cr_assert_str_eq(b, "1234567");
  cr_assert_eq(heed_fmt(b, sizeof b, "%d", 12345678), 1);
  cr_assert_str_eq(b, "1234...");
  heed_error e;
  char name[1200];
  memset(name, 'n', sizeof name - 1);
  name[sizeof name - 1] = '\0';
  heed_err_set(&e, HEED_E_INVALID, "device '%.300s' refused", name);
  cr_assert(strstr(e.msg, "' refused"), "a message with a 300-byte name fits whole: %s", e.msg);
  heed_err_set(&e, HEED_E_INVALID, "device '%s' refused", name);
  cr_assert_eq(strlen(e.msg), HEED_ERROR_MSG_MAX - 1);
  cr_assert_str_eq(e.msg + HEED_ERROR_MSG_MAX - 4, "...", "a longer one says it was cut");
}
