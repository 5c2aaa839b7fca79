// Line charts for the applications, drawn by gnuplot (Debian's gnuplot-nox) into PNG or SVG.
// The data go to FILE.dat next to the picture, one gnuplot data block per series, so a chart can
// be redrawn or read without the program.
#pragma once
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace rolora::apps {

struct series {
  std::string title;
  std::vector<std::pair<double, double>> points;       // (x, y)
  std::string style = "linespoints lw 2 pt 7 ps 0.6";  // gnuplot "with" clause
};

struct chart {
  std::string title, xlabel, ylabel;
  bool log_y = false;
  std::string key = "bottom right";  // gnuplot legend position
  std::string yrange = "*:*";        // gnuplot range, e.g. "0:1"
  std::string xrange = "*:*";
};

inline void ensure_parent(const std::string& file) {
  const auto parent = std::filesystem::path(file).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent);
}

// A gnuplot single-quoted string ('' stands for a quote inside).
inline std::string gnuplot_string(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("''") : std::string(1, c);
  return q + "'";
}

// Writes FILE.dat and draws `lines` into FILE (.png or .svg). Returns false, with a warning on
// stderr, when gnuplot is missing or fails; throws when a file cannot be written.
inline bool draw_chart(const std::string& file, const chart& c, const std::vector<series>& lines) {
  ensure_parent(file);
  const std::string data = file + ".dat";
  std::ofstream dat(data);
  if (!dat) throw std::runtime_error("cannot write " + data);
  dat.precision(17);
  for (const auto& s : lines) {
    dat << "# " << s.title << '\n';
    for (const auto& [x, y] : s.points) dat << x << ' ' << y << '\n';
    dat << "\n\n";
  }
  dat.close();

  if (std::system("command -v gnuplot > /dev/null 2>&1") != 0) {
    std::fprintf(stderr,
                 "warning: gnuplot not found, %s not drawn (data in %s); install it with "
                 "`apt-get install gnuplot-nox`\n",
                 file.c_str(), data.c_str());
    return false;
  }
  const bool png = std::filesystem::path(file).extension() == ".png";
  std::FILE* gp = popen("gnuplot", "w");
  if (!gp) throw std::runtime_error("cannot start gnuplot");
  std::fprintf(gp, "set encoding utf8\n");
  std::fprintf(gp, "set terminal %s size 900,600 enhanced font 'Sans,11'\n",
               png ? "pngcairo" : "svg");
  std::fprintf(gp, "set output %s\n", gnuplot_string(file).c_str());
  std::fprintf(gp, "set title %s noenhanced\n", gnuplot_string(c.title).c_str());
  std::fprintf(gp, "set xlabel %s noenhanced\nset ylabel %s noenhanced\n",
               gnuplot_string(c.xlabel).c_str(), gnuplot_string(c.ylabel).c_str());
  if (c.log_y) std::fprintf(gp, "set logscale y\nset format y '10^{%%L}'\n");
  std::fprintf(gp, "set grid\nset key %s box opaque noenhanced\nset xrange [%s]\nset yrange [%s]\n",
               c.key.c_str(), c.xrange.c_str(), c.yrange.c_str());
  std::string cmd = "plot ";
  for (std::size_t i = 0; i < lines.size(); ++i) {
    cmd += (i ? ", " : "") + gnuplot_string(data) + " index " + std::to_string(i) +
           " using 1:2 with " + lines[i].style + " title " + gnuplot_string(lines[i].title);
  }
  std::fprintf(gp, "%s\n", cmd.c_str());
  if (pclose(gp) == 0) return true;
  std::fprintf(stderr, "warning: gnuplot failed to draw %s\n", file.c_str());
  return false;
}

}  // namespace rolora::apps
