// Where HybridLab keeps its files, and how relative paths in experiment files are found,
// so that the same experiment works from any working directory.
#pragma once

#include <filesystem>
#include <optional>
#include <string>

namespace hl {

/// $XDG_DATA_HOME/hybridlab, else ~/.local/share/hybridlab: the default database and the
/// models `pretrain` makes live here.
std::filesystem::path default_data_dir();

/// Where `pretrain --preset NAME` puts its model when no --out is given.
std::filesystem::path default_pretrain_dir(const std::string& preset);

/// Finds a file or directory named in an experiment file: an absolute path as it is; a
/// relative one against the working directory, then the experiment file's folder, then
/// default_data_dir(). Returns the first that exists, as an absolute path.
std::optional<std::filesystem::path> find_experiment_path(
    const std::string& path, const std::filesystem::path& experiment_dir);

/// The folder with the preset experiment files: $HL_EXPERIMENTS_DIR, the installed share
/// folder or the source tree's experiments/ next to the program, or ./experiments.
std::optional<std::filesystem::path> find_experiments_dir(const std::filesystem::path& program_dir);

/// Deletes a file or a directory tree (nothing when it does not exist); false if some entry
/// could not be removed. std::filesystem::remove_all does the same, but PyTorch's libtorch.so
/// exports a broken copy of it that programs linked against that build call instead.
bool remove_tree(const std::filesystem::path& path);

}  // namespace hl
