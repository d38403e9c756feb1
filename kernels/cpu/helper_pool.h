// Helper threads for the native CPU kernels: one per extra core, started on first use and kept for the
// life of the process. A caller offers a job; every idle helper calls Work(job) on it, which claims the
// job's chunks one at a time alongside the caller. The caller then withdraws the job, so a helper that
// the machine schedules late finds nothing to do. Each kernel instantiates its own pool.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>

template <class Job, void (*Work)(Job&)>
class HelperPool {
 public:
  static HelperPool& instance() {
    static HelperPool* pool = new HelperPool();  // never destroyed: detached helpers may outlive static destruction
    return *pool;
  }
  unsigned helpers() const { return helpers_; }
  void offer(const std::shared_ptr<Job>& job) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      job_ = job;
      ++generation_;
    }
    cv_.notify_all();
  }
  void withdraw() {
    std::lock_guard<std::mutex> lock(mu_);
    job_.reset();
  }

 private:
  HelperPool() {
    unsigned n = std::thread::hardware_concurrency();
    for (unsigned t = 1; t < (n ? n : 1); ++t) std::thread([this] { loop(); }).detach();
    helpers_ = n > 1 ? n - 1 : 0;
  }
  void loop() {
    uint64_t seen = 0;
    for (;;) {
      std::shared_ptr<Job> job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return generation_ != seen; });
        seen = generation_;
        job = job_;
      }
      if (job) Work(*job);
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::shared_ptr<Job> job_;
  uint64_t generation_ = 0;
  unsigned helpers_ = 0;
};
