// Sampling on one rank: greedy picks the arg-max; seeded sampling draws from softmax(logits / T) restricted to
// top-k / top-p, checked by frequency over many draws against probabilities computed here.
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "engine/sampler.h"
#include "test_support.h"

using namespace strata;

namespace {
std::map<int, double> frequencies(const std::vector<float>& logits, SamplingParams p, int draws) {
  test::LocalCommunicator tp;
  std::map<int, double> freq;
  std::vector<SampleRow> rows;
  std::vector<float> batch;
  for (int i = 0; i < draws; ++i) {
    rows.push_back(SampleRow{p, i});
    batch.insert(batch.end(), logits.begin(), logits.end());
  }
  for (int token : sample_tokens(batch.data(), std::int64_t(logits.size()), 0, rows, tp)) freq[token] += 1.0 / draws;
  return freq;
}

std::vector<double> softmax(const std::vector<double>& x) {
  double m = *std::max_element(x.begin(), x.end()), total = 0;
  std::vector<double> p;
  for (double v : x) total += std::exp(v - m);
  for (double v : x) p.push_back(std::exp(v - m) / total);
  return p;
}
}  // namespace

TEST(Sampler, GreedyIsArgmaxWithLowestIdOnTies) {
  test::LocalCommunicator tp;
  const std::vector<float> logits = {0.1f, 3.0f, -1.0f, 3.0f, 2.9f, /*row 2*/ -5.0f, -4.5f, -6.0f, -4.0f, -9.0f};
  const std::vector<SampleRow> rows = {SampleRow{}, SampleRow{}};
  EXPECT_EQ(sample_tokens(logits.data(), 5, 100, rows, tp), (std::vector<std::int32_t>{101, 103}));
}

TEST(Sampler, TemperatureSamplingMatchesSoftmax) {
  const std::vector<float> logits = {0.0f, 1.0f, 2.0f, 0.5f};
  for (float temperature : {1.0f, 0.5f}) {
    const auto freq = frequencies(logits, SamplingParams{temperature, 0, 1.0f, 1234}, 40000);
    std::vector<double> scaled;
    for (float l : logits) scaled.push_back(l / temperature);
    const auto p = softmax(scaled);
    for (int i = 0; i < 4; ++i)
      EXPECT_NEAR(freq.count(i) ? freq.at(i) : 0.0, p[std::size_t(i)], 0.012) << "token " << i << " T " << temperature;
  }
}

TEST(Sampler, TopKKeepsOnlyTheKBest) {
  const std::vector<float> logits = {0.0f, 1.0f, 2.0f, 0.5f, 1.5f};
  const auto freq = frequencies(logits, SamplingParams{1.0f, 2, 1.0f, 99}, 30000);
  EXPECT_EQ(freq.size(), 2u);
  const auto p = softmax({2.0, 1.5});
  EXPECT_NEAR(freq.at(2), p[0], 0.015);
  EXPECT_NEAR(freq.at(4), p[1], 0.015);
}

TEST(Sampler, TopPKeepsTheSmallestNucleus) {
  // probabilities 0.5, 0.3, 0.15, 0.05: the nucleus for top_p 0.6 is {0, 1}
  const std::vector<float> logits = {float(std::log(0.5)), float(std::log(0.3)), float(std::log(0.15)),
                                     float(std::log(0.05))};
  const auto freq = frequencies(logits, SamplingParams{1.0f, 0, 0.6f, 7}, 30000);
  EXPECT_EQ(freq.size(), 2u);
  EXPECT_NEAR(freq.at(0), 0.5 / 0.8, 0.015);
  EXPECT_NEAR(freq.at(1), 0.3 / 0.8, 0.015);
}

TEST(Sampler, SameSeedAndStepGiveTheSameTokenOtherSeedsDiffer) {
  test::LocalCommunicator tp;
  std::vector<float> logits(64);
  for (int i = 0; i < 64; ++i) logits[std::size_t(i)] = float(std::sin(i));
  std::set<std::int32_t> seen;
  for (std::uint64_t seed = 0; seed < 20; ++seed) {
    const std::vector<SampleRow> rows = {SampleRow{{1.0f, 0, 1.0f, seed}, 3}};
    const auto a = sample_tokens(logits.data(), 64, 0, rows, tp), b = sample_tokens(logits.data(), 64, 0, rows, tp);
    EXPECT_EQ(a, b);
    seen.insert(a[0]);
  }
  EXPECT_GT(seen.size(), 5u);
}

TEST(Sampler, GumbelNoiseIsStandardGumbel) {
  double mean = 0;
  const int n = 200000;
  for (int i = 0; i < n; ++i) mean += gumbel_noise(5, i, 17) / n;
  EXPECT_NEAR(mean, 0.5772156649, 0.01);  // the Euler-Mascheroni constant
}

TEST(Sampler, NanLogitsRankBelowEveryNumber) {
  test::LocalCommunicator tp;
  const std::vector<float> logits = {NAN, 1.0f, NAN, 3.0f, 2.0f, NAN};
  const std::vector<SampleRow> greedy = {SampleRow{}};
  EXPECT_EQ(sample_tokens(logits.data(), 6, 0, greedy, tp)[0], 3);
  for (std::int64_t step = 0; step < 200; ++step) {
    const std::vector<SampleRow> top2 = {SampleRow{{1.0f, 2, 1.0f, 1}, step}};
    const auto token = sample_tokens(logits.data(), 6, 0, top2, tp)[0];
    ASSERT_TRUE(token == 3 || token == 4) << "step " << step << " chose " << token;
    const std::vector<SampleRow> plain = {SampleRow{{1.0f, 0, 1.0f, 2}, step}};
    const auto any = sample_tokens(logits.data(), 6, 0, plain, tp)[0];
    ASSERT_TRUE(any == 1 || any == 3 || any == 4) << "step " << step << " chose NaN token " << any;
  }
}
