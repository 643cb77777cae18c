#include <gtest/gtest.h>

#include "minillm/config.h"

TEST(Config, PresetsValidate) {
  for (const char* const* n = minillm::preset_names(); *n; ++n) EXPECT_NO_THROW(minillm::preset_config(*n).validate());
}
