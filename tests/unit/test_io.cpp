// io/: prompt files (errors name file:line), in-order results, checkpoint shards (round trip in every dtype,
// shape and missing-tensor errors, a corrupted byte caught by the checksum), the byte tokenizer.
#include <gtest/gtest.h>

#include <sys/resource.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "io/checkpoint.h"
#include "io/prompts.h"
#include "io/results.h"
#include "io/safetensors.h"
#include "io/tokenizer.h"
#include "runtime/base/error.h"
#include "tests/unit/error_of.h"

using namespace strata;
namespace fs = std::filesystem;

using strata::test::error_of;

namespace {
fs::path temp_dir(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / ("strata_test_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}
}  // namespace

TEST(Prompts, TextLinesSkipBlanks) {
  const auto p = parse_prompts("first\n\n  \nsecond\r\nthird", "p.txt", PromptFormat::Auto);
  ASSERT_EQ(p.size(), 3u);
  EXPECT_EQ(p[1].text, "second");
  EXPECT_EQ(p[2].id, 2);
  EXPECT_EQ(p[2].origin, "p.txt:5");
}

TEST(Prompts, JsonlFieldsAndOverrides) {
  const auto p = parse_prompts(
      "{\"id\": \"a\", \"prompt\": \"x\\ny\", \"temperature\": 0.7, \"top_k\": 5, \"stop\": \"END\", \"seed\": 9}\n"
      "{\"prompt\": \"plain\", \"max_tokens\": 3, \"stop\": [\"a\", \"b\"]}\n",
      "p.jsonl", PromptFormat::Auto);
  ASSERT_EQ(p.size(), 2u);
  EXPECT_EQ(p[0].id, "a");
  EXPECT_EQ(p[0].text, "x\ny");
  EXPECT_DOUBLE_EQ(*p[0].overrides.temperature, 0.7);
  EXPECT_EQ(*p[0].overrides.top_k, 5);
  EXPECT_EQ(*p[0].overrides.seed, 9u);
  EXPECT_EQ(p[0].overrides.stop->at(0), "END");
  EXPECT_EQ(p[1].id, 1);
  EXPECT_EQ(*p[1].overrides.max_tokens, 3);
  EXPECT_EQ(p[1].overrides.stop->size(), 2u);
}

TEST(Prompts, MalformedJsonlNamesFileAndLine) {
  auto parse = [](const std::string& text) {
    return error_of([&] { parse_prompts(text, "in.jsonl", PromptFormat::Jsonl); });
  };
  EXPECT_NE(parse("{\"prompt\": \"ok\"}\n{\"prompt\": \"broken\"\n").find("in.jsonl:2: not valid JSON"),
            std::string::npos);
  EXPECT_NE(parse("{\"prompt\": \"ok\", \"temprature\": 1}\n").find("in.jsonl:1: unknown field 'temprature'"),
            std::string::npos);
  EXPECT_NE(parse("\n{\"id\": 1}\n").find("in.jsonl:2: missing field 'prompt'"), std::string::npos);
  EXPECT_NE(parse("{\"prompt\": 5}\n").find("field 'prompt' must be a string"), std::string::npos);
  EXPECT_NE(parse("{\"prompt\": \"a\", \"top_k\": \"many\"}\n").find("field 'top_k' must be an integer"),
            std::string::npos);
  EXPECT_NE(parse("{\"id\": 7, \"prompt\": \"a\"}\n{\"id\": 7, \"prompt\": \"b\"}\n")
                .find("in.jsonl:2: id 7 was already used at in.jsonl:1"),
            std::string::npos);
  EXPECT_NE(parse("[1, 2]\n").find("in.jsonl:1: expected a JSON object"), std::string::npos);
  EXPECT_NE(parse("{\"prompt\": \"a\", \"max_tokens\": 2.9}\n").find("'max_tokens' must be an integer"),
            std::string::npos);
  EXPECT_NE(parse("{\"prompt\": \"a\", \"seed\": -5}\n").find("'seed' must be a non-negative integer"),
            std::string::npos);
  EXPECT_NE(parse("{\"prompt\": \"a\", \"temperature\": \"hot\"}\n").find("'temperature' must be a number"),
            std::string::npos);
  EXPECT_NE(parse("\n\n").find("no prompts"), std::string::npos);
}

namespace {
std::string write_temp(const std::string& name, const std::string& content) {
  const auto path = std::filesystem::temp_directory_path() / ("strata_test_" + std::to_string(getpid()) + "_" + name);
  std::ofstream(path, std::ios::binary) << content;
  return path.string();
}

std::vector<Prompt> read_all(const std::string& path, PromptFormat format, std::vector<std::size_t>* lines = nullptr) {
  PromptReader reader(path, format);
  std::vector<Prompt> out;
  Prompt p;
  std::string line;
  std::size_t number = 0;
  while (reader.next(p, line, number)) {
    out.push_back(p);
    if (lines) lines->push_back(number);
  }
  return out;
}
}  // namespace

// The stream reader gives exactly what parsing the whole file gives, in every format, with line numbers.
TEST(Prompts, StreamReaderEqualsWholeFileParse) {
  const std::vector<std::pair<std::string, std::string>> files = {
      {"a.txt", "first\n\n  \nsecond\r\nthird"},
      {"b.jsonl", "{\"id\": \"x\", \"prompt\": \"hi\", \"max_tokens\": 3}\n\n{\"prompt\": \"there\", \"n\": 2}\n"},
      {"c.jsonl", "{\"custom_id\": \"r1\", \"method\": \"POST\", \"url\": \"/v1/completions\", \"body\": "
                  "{\"prompt\": \"p\", \"max_tokens\": 2}}\n"}};
  for (const auto& [name, content] : files) {
    SCOPED_TRACE(name);
    const std::string path = write_temp(name, content);
    std::vector<std::size_t> lines;
    const auto streamed = read_all(path, PromptFormat::Auto, &lines);
    const auto whole = parse_prompts(content, path, PromptFormat::Auto);
    ASSERT_EQ(streamed.size(), whole.size());
    for (std::size_t i = 0; i < whole.size(); ++i) {
      EXPECT_EQ(streamed[i].id, whole[i].id);
      EXPECT_EQ(streamed[i].text, whole[i].text);
      EXPECT_EQ(streamed[i].origin, whole[i].origin);
      EXPECT_EQ(streamed[i].format, whole[i].format);
      EXPECT_EQ(streamed[i].overrides.max_tokens, whole[i].overrides.max_tokens);
      EXPECT_EQ(streamed[i].origin, path + ":" + std::to_string(lines[i]));
    }
    std::filesystem::remove(path);
  }
}

// Repeated ids are found after the whole file is read (24 bytes per prompt, not the ids), naming both lines: the
// first repeat in the file, as the whole-file parser reports it.
TEST(Prompts, DuplicateIdsNameBothLines) {
  const std::string content = "{\"id\": 1, \"prompt\": \"a\"}\n{\"id\": \"q\", \"prompt\": \"b\"}\n{\"id\": 2, \"prompt\": "
                              "\"c\"}\n{\"id\": \"q\", \"prompt\": \"d\"}\n{\"id\": 1, \"prompt\": \"e\"}\n";
  const std::string path = write_temp("dups.jsonl", content);
  PromptReader reader(path, PromptFormat::Auto);
  DuplicateIds ids(path, reader.format());
  Prompt p;
  std::string line;
  std::size_t number = 0;
  while (reader.next(p, line, number)) ids.add(p, number, reader.prompts_read() - 1);
  const std::string why = error_of([&] { ids.check(); });
  EXPECT_NE(why.find(path + ":4: id \"q\" was already used at " + path + ":2"), std::string::npos) << why;
  EXPECT_EQ(why, error_of([&] { parse_prompts(content, path, PromptFormat::Auto); }));
  // Unique ids pass.
  const std::string unique = write_temp("unique.jsonl", "{\"id\": 1, \"prompt\": \"a\"}\n{\"id\": \"1\", \"prompt\": \"b\"}\n");
  DuplicateIds fine(unique, PromptFormat::Jsonl);
  PromptReader again(unique, PromptFormat::Auto);
  while (again.next(p, line, number)) fine.add(p, number, again.prompts_read() - 1);
  EXPECT_NO_THROW(fine.check()) << "1 and \"1\" are different ids";
  std::filesystem::remove(path);
  std::filesystem::remove(unique);
}

TEST(Results, WrittenInInputOrderAsSoonAsPossible) {
  const fs::path dir = temp_dir("results");
  const std::string path = (dir / "out.jsonl").string();
  auto lines = [&] {
    std::ifstream in(path);
    std::vector<std::string> l;
    for (std::string s; std::getline(in, s);) l.push_back(s);
    return l;
  };
  {
    ResultWriter w(path, false, 3);
    w.submit(1, {{"i", 1}});
    EXPECT_EQ(lines().size(), 0u) << "record 1 must wait for record 0";
    w.submit(0, {{"i", 0}, {"text", std::string("bad \xff utf8")}});
    EXPECT_EQ(lines().size(), 2u) << "records 0 and 1 are on disk (flushed) before the run ends";
    EXPECT_NE(lines()[0].find("bad \xEF\xBF\xBD utf8"), std::string::npos) << "invalid UTF-8 becomes U+FFFD";
    EXPECT_NE(error_of([&] { w.finish(); }).find("only 2 of 3"), std::string::npos);
    w.submit(2, {{"i", 2}});
    w.finish();
  }
  EXPECT_EQ(lines().size(), 3u);
  EXPECT_NE(error_of([&] { ResultWriter again(path, false, 1); }).find("already exists"), std::string::npos);
  EXPECT_EQ(lines().size(), 3u) << "an existing output is never clobbered without --overwrite";
  fs::remove_all(dir);
}

// A write that fails part-way (here the file-size limit, as a full disk would) leaves only whole records.
TEST(Results, FailedWriteIsCutBackToTheLastCompleteRecord) {
  const fs::path dir = temp_dir("results_full");
  const std::string path = (dir / "out.jsonl").string();
  const std::string text(40, 'x');  // each record ~60 bytes: the limit falls inside the third
  std::string error;
  {
    ResultWriter w(path, false, 10);
    struct rlimit old {};
    ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &old), 0);
    const auto old_handler = std::signal(SIGXFSZ, SIG_IGN);  // EFBIG instead of the default kill
    struct rlimit small = old;
    small.rlim_cur = 150;
    ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &small), 0);
    for (std::size_t i = 0; i < 10 && error.empty(); ++i)
      error = error_of([&] { w.submit(i, {{"i", i}, {"text", text}}); });
    setrlimit(RLIMIT_FSIZE, &old);
    std::signal(SIGXFSZ, old_handler);
    EXPECT_EQ(w.written(), 2u);
  }
  EXPECT_NE(error.find(path), std::string::npos) << error;
  EXPECT_NE(error.find(std::strerror(EFBIG)), std::string::npos) << "the system's reason: " << error;
  EXPECT_NE(error.find("after 2 complete records"), std::string::npos) << error;
  std::ifstream in(path, std::ios::binary);
  const std::string content((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_FALSE(content.empty());
  EXPECT_EQ(content.back(), '\n') << "the file must end with a whole record, not a fragment";
  std::size_t lines = 0;
  for (std::size_t at = 0, end; (end = content.find('\n', at)) != std::string::npos; at = end + 1, ++lines)
    EXPECT_TRUE(nlohmann::json::accept(content.substr(at, end - at)));
  EXPECT_EQ(lines, 2u);
  fs::remove_all(dir);
}

TEST(Results, OutputTargetChecksTouchNothing) {
  const fs::path dir = temp_dir("results_target");
  const std::string prompts = (dir / "prompts.txt").string();
  { std::ofstream(prompts) << "hello\n"; }
  const std::string link = (dir / "link.txt").string();
  fs::create_hard_link(prompts, link);
  EXPECT_NE(error_of([&] { check_output_target(prompts, true, {prompts}); }).find("is the prompt file"),
            std::string::npos);
  EXPECT_NE(error_of([&] { check_output_target(link, true, {prompts}); }).find("is the prompt file"), std::string::npos)
      << "the same file under another name (same inode) is the prompt file too";
  EXPECT_EQ(fs::file_size(prompts), 6u) << "the prompts are untouched";
  fs::create_directory(dir / "empty");
  const std::string folder_error = error_of([&] { check_output_target((dir / "empty").string(), true, {}); });
  EXPECT_NE(folder_error.find("is a directory"), std::string::npos) << folder_error;
  EXPECT_EQ(folder_error.find("not empty"), std::string::npos)
      << "an empty folder is not 'not empty': " << folder_error;
  const std::string missing =
      error_of([&] { check_output_target((dir / "nowhere" / "out.jsonl").string(), true, {}); });
  EXPECT_NE(missing.find(std::strerror(ENOENT)), std::string::npos) << "the system's reason: " << missing;
  EXPECT_EQ(error_of([&] { check_output_target((dir / "new.jsonl").string(), false, {prompts}); }), "");
  EXPECT_FALSE(fs::exists(dir / "new.jsonl")) << "checking creates nothing";
  fs::remove_all(dir);
}

TEST(Checkpoint, ShardRoundTripInEveryDtype) {
  const fs::path dir = temp_dir("shard");
  std::vector<float> data(6 * 70);
  std::mt19937 rng(3);
  std::normal_distribution<float> normal;
  for (auto& x : data) x = normal(rng);
  for (DType dtype : {DType::F32, DType::F16, DType::BF16}) {
    const std::string path = (dir / (std::string(dtype_name(dtype)) + ".h5")).string();
    {
      ShardWriter w(path, {{"format_version", 1}, {"note", "test"}});
      w.write(StoredTensor{"model.w", {6, 70}, dtype, {12, 70}, {6, 0}, "rows"}, data.data());
      w.close();
    }
    ShardReader r(path);
    const StoredTensor t = r.describe("model.w");
    EXPECT_EQ(t.dtype, dtype);
    EXPECT_EQ(t.global_shape, (Shape{12, 70}));
    EXPECT_EQ(t.global_offset, (Shape{6, 0}));
    EXPECT_EQ(t.split, "rows");
    EXPECT_EQ(r.attributes()["note"], "test");
    std::vector<float> back(data.size());
    r.read_f32("model.w", {6, 70}, back.data());
    const double tolerance = dtype == DType::F32 ? 0 : dtype == DType::F16 ? 1.0 / 1024 : 1.0 / 128;
    for (std::size_t i = 0; i < data.size(); ++i)
      ASSERT_LE(std::abs(back[i] - data[i]), tolerance * std::abs(data[i]) + 1e-7) << dtype_name(dtype) << " " << i;
    EXPECT_NE(error_of([&] {
                r.read_f32("model.w", {70, 6}, back.data());
              }).find("has shape [6, 70], expected [70, 6]"),
              std::string::npos);
    EXPECT_NE(error_of([&] { r.read_f32("model.missing", {1}, back.data()); }).find("has no tensor model.missing"),
              std::string::npos);
  }
  fs::remove_all(dir);
}

TEST(Checkpoint, CorruptedByteIsCaughtByTheChecksum) {
  const fs::path dir = temp_dir("corrupt");
  const std::string path = (dir / "s.h5").string();
  std::vector<float> data(1000);
  for (std::size_t i = 0; i < data.size(); ++i) data[i] = 1000.0f + float(i);  // a pattern easy to find on disk
  {
    ShardWriter w(path, {{"format_version", 1}});
    w.write(StoredTensor{"t", {1000}, DType::F32, {1000}, {0}, "replicated"}, data.data());
    w.close();
  }
  std::string bytes;
  {
    std::ifstream in(path, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  const std::string needle(reinterpret_cast<const char*>(&data[500]), 4);
  const std::size_t at = bytes.find(needle);
  ASSERT_NE(at, std::string::npos);
  bytes[at] ^= 0x01;
  {
    std::ofstream out(path, std::ios::binary);
    out << bytes;
  }
  ShardReader r(path);
  std::vector<float> back(1000);
  const std::string message = error_of([&] { r.read_f32("t", {1000}, back.data()); });
  EXPECT_NE(message.find("checksum mismatch"), std::string::npos) << message;
  EXPECT_NE(message.find("tensor t"), std::string::npos) << message;
  fs::remove_all(dir);
}

TEST(Checkpoint, ManifestErrorsNameTheFile) {
  const fs::path dir = temp_dir("manifest");
  EXPECT_NE(error_of([&] { Manifest::read((dir / "nope").string()); }).find("does not exist"), std::string::npos);
  EXPECT_NE(error_of([&] { Manifest::read(dir.string()); }).find("manifest.json"), std::string::npos);
  std::ofstream(dir / "manifest.json") << "{\"format\": \"strata-checkpoint\", \"format_version\": 9}";
  EXPECT_NE(error_of([&] { Manifest::read(dir.string()); }).find("format_version 9 is not supported"),
            std::string::npos);
  std::ofstream(dir / "manifest.json") << "{not json";
  EXPECT_NE(error_of([&] { Manifest::read(dir.string()); }).find("not valid JSON"), std::string::npos);
  std::ofstream(dir / "garbage.h5") << "this is not an HDF5 file";
  EXPECT_NE(error_of([&] { ShardReader r((dir / "garbage.h5").string()); }).find("not an HDF5 file"),
            std::string::npos);
  fs::remove_all(dir);
}

TEST(Tokenizer, BytesRoundTripAndSpecialsAreSkipped) {
  ByteTokenizer t;
  const std::string text = "héllo \xf0\x9f\x91\x8b\t\n\xff";  // accents, emoji, control bytes, invalid UTF-8
  auto ids = t.encode(text, true);
  EXPECT_EQ(ids.front(), ByteTokenizer::kBos);
  EXPECT_EQ(ids.size(), text.size() + 1);
  ids.push_back(ByteTokenizer::kEos);
  EXPECT_EQ(t.decode(ids), text);
  const std::vector<std::int32_t> unknown = {104, 5000, 105};
  EXPECT_EQ(t.decode(unknown), "h\xEF\xBF\xBDi");
  EXPECT_NE(error_of([] {
              make_tokenizer({{"type", "sentencepiece"}}, "m.json");
            }).find("unsupported tokenizer"),
            std::string::npos);
}

TEST(Safetensors, HeaderIsValidatedAgainstTheData) {
  auto parse = [](const std::string& header, std::uint64_t size) {
    return error_of([&] { parse_safetensors_header(header, size, "m.safetensors"); });
  };
  const auto ok = parse_safetensors_header(
      R"({"a": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, 12]}, "__metadata__": {"x": "y"}})", 12, "m");
  ASSERT_EQ(ok.size(), 1u);
  EXPECT_EQ(ok.at("a").dtype, DType::BF16);
  EXPECT_EQ(ok.at("a").shape, (Shape{2, 3}));
  EXPECT_NE(parse("{not json", 0).find("m.safetensors: header is not valid JSON"), std::string::npos);
  EXPECT_NE(parse(R"({"a": {"dtype": "I8", "shape": [1], "data_offsets": [0, 1]}})", 1).find("dtype 'I8'"),
            std::string::npos);
  EXPECT_NE(parse(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}})", 8)
                .find("tensor a: shape [2] x 4 bytes = 8 bytes, but data_offsets span 4"),
            std::string::npos);
  EXPECT_NE(parse(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})", 4)
                .find("fall outside the data section of 4 bytes"),
            std::string::npos);
  EXPECT_NE(parse(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                      "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})",
                  8)
                .find("overlaps tensor"),
            std::string::npos);
  EXPECT_NE(parse(R"({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}})", 8).find("non-negative"),
            std::string::npos);
  EXPECT_NE(parse(R"({"a": {"dtype": "F32", "shape": [2]}})", 8).find("needs \"dtype\""), std::string::npos);
  EXPECT_NE(parse(R"({"a": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 8]}})", 8)
                .find("too large"),
            std::string::npos);
  // More dimensions than a Shape holds: refused by name, not thrown from deep inside with no file or tensor.
  EXPECT_NE(parse(R"({"w": {"dtype": "F32", "shape": [1, 1, 1, 1, 1, 1, 1, 1, 2], "data_offsets": [0, 8]}})", 8)
                .find("m.safetensors: tensor w: shape [1,1,1,1,1,1,1,1,2] has 9 dimensions (at most 8)"),
            std::string::npos);
  const auto eight = parse_safetensors_header(
      R"({"w": {"dtype": "F32", "shape": [1, 1, 1, 1, 1, 1, 1, 2], "data_offsets": [0, 8]}})", 8, "m");
  EXPECT_EQ(eight.at("w").shape, (Shape{1, 1, 1, 1, 1, 1, 1, 2}));
}

// Shape holds its dimensions inline (no allocation per TensorView copy) with the vector operations strata uses.
TEST(Shape, BehavesAsAVectorOfDimensionsUpToItsCapacity) {
  Shape s{4, 5};
  EXPECT_EQ(s.size(), 2u);
  EXPECT_EQ(shape_numel(s), 20);
  EXPECT_EQ(shape_string(s), "[4, 5]");
  s.push_back(6);
  EXPECT_EQ(s, (Shape{4, 5, 6}));
  EXPECT_FALSE(s == (Shape{4, 5}));
  s.insert(s.begin() + 1, 9);
  EXPECT_EQ(s, (Shape{4, 9, 5, 6}));
  s.erase(s.begin());
  EXPECT_EQ(s, (Shape{9, 5, 6}));
  EXPECT_EQ(s.front(), 9);
  EXPECT_EQ(s.back(), 6);
  EXPECT_EQ(Shape(3, 0), (Shape{0, 0, 0}));
  const std::vector<std::int64_t> dims = {7, 8};
  EXPECT_EQ(Shape(dims), (Shape{7, 8}));
  EXPECT_EQ(Shape(dims.begin(), dims.end()), (Shape{7, 8}));
  EXPECT_EQ(Shape{}.size(), 0u);
  EXPECT_EQ(shape_numel(Shape{}), 1);  // a scalar
  EXPECT_NE(error_of([&] { (void)s.at(3); }).find("dimension 3 of a tensor shape of 3"), std::string::npos);
  Shape full(Shape::kMaxDims, 1);
  EXPECT_NE(error_of([&] { full.push_back(2); }).find("9 dimensions (at most 8)"), std::string::npos);
  EXPECT_EQ(full.size(), Shape::kMaxDims);  // unchanged by the refused push
}

TEST(Safetensors, FileReadsRowsAndRefusesTruncation) {
  const fs::path dir = temp_dir("safetensors");
  const std::string header = R"({"w": {"dtype": "F32", "shape": [3, 2], "data_offsets": [0, 24]}})";
  const float values[6] = {1, 2, 3, 4, 5, 6};
  auto write = [&](const std::string& path, std::uint64_t length, std::size_t data_bytes) {
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(&length), 8);
    out << header;
    out.write(reinterpret_cast<const char*>(values), std::streamsize(data_bytes));
  };
  const std::string good = (dir / "good.safetensors").string(), cut = (dir / "cut.safetensors").string();
  write(good, header.size(), 24);
  SafetensorsFile file(good);
  float rows[4];
  file.read_rows_f32("w", 1, 3, rows);
  EXPECT_EQ(std::vector<float>(rows, rows + 4), (std::vector<float>{3, 4, 5, 6}));
  EXPECT_NE(error_of([&] { file.entry("missing"); }).find("has no tensor missing"), std::string::npos);
  write(cut, header.size(), 20);
  EXPECT_NE(error_of([&] { SafetensorsFile f(cut); }).find("fall outside the data section of 20 bytes"),
            std::string::npos);
  write(cut, 1u << 30, 24);
  EXPECT_NE(error_of([&] { SafetensorsFile f(cut); }).find("runs past the end of the file"), std::string::npos);
  fs::remove_all(dir);
}
