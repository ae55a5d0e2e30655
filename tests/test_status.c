#include <criterion/criterion.h>
#include <string.h>

#include "heed/status.h"

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
