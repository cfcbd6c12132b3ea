// load_package: runs a d2bench package (.pt2) from C++, without Python.
//
//   load_package PACKAGE.pt2 IMAGES.bin [--torchvision LIB.so] [--warmup N] [--iters N]
//                [--out DETECTIONS.txt]
//
// PACKAGE.pt2   made by `python -m runner.package` or the aot_package backend; its metadata
//               says the input (d2bench.inputs: "N x [3, H, W] float32") and the device
// IMAGES.bin    N*3*H*W float32 values, C order: the images, as the package takes them
// --torchvision torchvision's native library (its _C*.so): the package calls
//               torchvision::roi_align by name, and loading the library registers it
//
// It loads the package with libtorch's AOTIModelPackageLoader (single-threaded runner, the
// mode a CUDA graph may capture), runs the images, and times two ways of calling it, each the
// median of --iters calls after --warmup untimed ones, the host clock around each call:
//   plain  loader.run(images), the counts copied back (the call's one synchronisation)
//   graph  (CUDA) the same call captured once as a CUDA graph: copy the images into the
//          graph's inputs, replay, copy the counts and exactness flags back, slice; what the
//          aot_package backend times in Python
// Prints one `key=value` line per figure; --out writes each image's detections as text
// (count, then "class score x1 y1 x2 y2" per detection) for a comparison with Python.
#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/torch.h>

#ifdef D2BENCH_CUDA
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace {

struct Options {
  std::string package, images, torchvision, out;
  int warmup = 50, iters = 200;
};

// A refusal: thrown, so that the loader's destructor runs on the way out and removes the
// package files it unpacked (std::exit would leave them in TMPDIR); main prints it, exit 2.
struct Refused {
  std::string message;
};

[[noreturn]] void fail(const std::string& message) { throw Refused{message}; }

Options parse(int argc, char** argv) {
  Options o;
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) fail(arg + " needs a value");
      return argv[++i];
    };
    if (arg == "--torchvision") o.torchvision = value();
    else if (arg == "--warmup") o.warmup = std::stoi(value());
    else if (arg == "--iters") o.iters = std::stoi(value());
    else if (arg == "--out") o.out = value();
    else if (arg.rfind("--", 0) == 0) fail("unknown option " + arg);
    else positional.push_back(arg);
  }
  if (positional.size() != 2 || o.iters < 1 || o.warmup < 0)
    fail("usage: load_package PACKAGE.pt2 IMAGES.bin [--torchvision LIB.so] [--warmup N] "
         "[--iters N] [--out DETECTIONS.txt]");
  o.package = positional[0];
  o.images = positional[1];
  return o;
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  size_t n = values.size();
  return n % 2 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

double percentile(std::vector<double> values, double q) {
  std::sort(values.begin(), values.end());
  size_t index = std::min(values.size() - 1, static_cast<size_t>(q * (values.size() - 1) + 0.5));
  return values[index];
}

void synchronize(const torch::Device& device) {
#ifdef D2BENCH_CUDA
  if (device.is_cuda()) c10::cuda::getCurrentCUDAStream(device.index()).synchronize();
#endif
}

// counts [N] and exact [N] back to the host in one copy, and each image's valid slots
std::vector<int64_t> answer(const std::vector<at::Tensor>& outputs,
                            std::vector<at::Tensor>* detections) {
  auto flags = torch::cat({outputs[3], outputs[4].to(torch::kLong)}).to(torch::kCPU);
  int64_t n = outputs[3].size(0);
  std::vector<int64_t> counts(flags.data_ptr<int64_t>(), flags.data_ptr<int64_t>() + n);
  if (detections != nullptr) {
    detections->clear();
    for (int64_t i = 0; i < n; ++i)
      for (int field = 0; field < 3; ++field)
        detections->push_back(outputs[field][i].narrow(0, 0, counts[i]));
  }
  return counts;
}

template <typename Call>
std::vector<double> time_calls(Call call, int warmup, int iters, const torch::Device& device) {
  for (int i = 0; i < warmup; ++i) call();
  synchronize(device);
  std::vector<double> ms;
  for (int i = 0; i < iters; ++i) {
    auto start = std::chrono::steady_clock::now();
    call();  // ends with a copy to the host: synchronised
    auto stop = std::chrono::steady_clock::now();
    ms.push_back(std::chrono::duration<double, std::milli>(stop - start).count());
  }
  return ms;
}

}  // namespace

int run(int argc, char** argv) {
  Options o = parse(argc, argv);
  if (!o.torchvision.empty() && dlopen(o.torchvision.c_str(), RTLD_NOW | RTLD_GLOBAL) == nullptr)
    fail(std::string("cannot load torchvision's library: ") + dlerror());

  auto started = std::chrono::steady_clock::now();
  torch::inductor::AOTIModelPackageLoader loader(o.package, "model", /*run_single_threaded=*/true);
  double load_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  auto meta = loader.get_metadata();
  if (!meta.count("d2bench.inputs")) fail(o.package + ": no d2bench metadata; not a d2bench package");
  std::smatch m;
  std::regex shape(R"((\d+) x \[3, (\d+), (\d+)\])");
  if (!std::regex_search(meta["d2bench.inputs"], m, shape))
    fail("unexpected d2bench.inputs: " + meta["d2bench.inputs"]);
  int64_t batch = std::stoll(m[1]), height = std::stoll(m[2]), width = std::stoll(m[3]);
  torch::Device device(meta["d2bench.device"] == "cuda" ? torch::kCUDA : torch::kCPU);

  std::ifstream file(o.images, std::ios::binary | std::ios::ate);
  if (!file) fail("cannot read " + o.images);
  int64_t expected = batch * 3 * height * width * 4;
  if (file.tellg() != expected)
    fail(o.images + ": " + std::to_string(static_cast<int64_t>(file.tellg())) + " bytes, need " +
         std::to_string(expected) + " (" + meta["d2bench.inputs"] + ")");
  std::vector<float> pixels(batch * 3 * height * width);
  file.seekg(0);
  file.read(reinterpret_cast<char*>(pixels.data()), expected);
  auto all = torch::from_blob(pixels.data(), {batch, 3, height, width}, torch::kFloat32)
                 .to(device)
                 .contiguous();
  std::vector<at::Tensor> images;
  for (int64_t i = 0; i < batch; ++i) images.push_back(all[i].contiguous());

  torch::NoGradGuard no_grad;
  std::vector<at::Tensor> detections;
  auto outputs = loader.run(images);
  auto counts = answer(outputs, &detections);
  synchronize(device);

  auto plain = time_calls([&] { answer(loader.run(images), &detections); }, o.warmup, o.iters,
                          device);
  std::printf("package=%s\nload_s=%.3f\ndevice=%s\ninputs=%s\n", o.package.c_str(), load_s,
              device.str().c_str(), meta["d2bench.inputs"].c_str());
  std::printf("plain_ms_median=%.4f\nplain_ms_p99=%.4f\n", median(plain), percentile(plain, 0.99));

#ifdef D2BENCH_CUDA
  if (device.is_cuda()) {
    std::vector<at::Tensor> inputs;
    for (auto& image : images) inputs.push_back(image.clone());
    auto main_stream = c10::cuda::getCurrentCUDAStream();
    auto side = c10::cuda::getStreamFromPool();
    at::cuda::CUDAEvent ready, warm;
    ready.record(main_stream);
    ready.block(side);  // the side stream waits for the inputs
    {
      c10::cuda::CUDAStreamGuard guard(side);
      for (int i = 0; i < 3; ++i) loader.run(inputs);
    }
    warm.record(side);
    warm.block(main_stream);
    at::cuda::CUDAGraph graph;
    std::vector<at::Tensor> static_out;
    {
      c10::cuda::CUDAStreamGuard guard(side);
      graph.capture_begin();
      static_out = loader.run(inputs);
      graph.capture_end();
    }
    synchronize(device);
    auto replay = [&] {
      for (size_t i = 0; i < images.size(); ++i) inputs[i].copy_(images[i]);
      graph.replay();
      return answer(static_out, &detections);
    };
    auto replayed = replay();
    if (replayed != counts) fail("the replayed graph's counts differ from a plain call's");
    auto graphed = time_calls(replay, o.warmup, o.iters, device);
    std::printf("graph_ms_median=%.4f\ngraph_ms_p99=%.4f\n", median(graphed),
                percentile(graphed, 0.99));
  }
#endif

  std::ostringstream shown;
  for (size_t i = 0; i < counts.size(); ++i) shown << (i ? "," : "") << counts[i];
  std::printf("counts=%s\n", shown.str().c_str());
  if (!o.out.empty()) {
    std::ofstream text(o.out);
    answer(outputs, &detections);
    for (size_t i = 0; i < counts.size(); ++i) {
      auto boxes = detections[3 * i].to(torch::kCPU);
      auto scores = detections[3 * i + 1].to(torch::kCPU);
      auto classes = detections[3 * i + 2].to(torch::kCPU);
      text << counts[i] << "\n";
      char line[256];
      for (int64_t j = 0; j < counts[i]; ++j) {
        std::snprintf(line, sizeof line, "%lld %.9g %.9g %.9g %.9g %.9g\n",
                      static_cast<long long>(classes[j].item<int64_t>()),
                      scores[j].item<float>(), boxes[j][0].item<float>(),
                      boxes[j][1].item<float>(), boxes[j][2].item<float>(),
                      boxes[j][3].item<float>());
        text << line;
      }
    }
  }
  return 0;
}

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const Refused& refused) {
    std::cerr << "load_package: " << refused.message << std::endl;
    return 2;
  }
}
