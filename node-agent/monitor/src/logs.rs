//! Container logs in the CRI format, one line per output line:
//!
//! ```text
//! 2026-11-22T23:11:30.123456789Z stdout F hello
//! 2026-11-22T23:11:30.123460000Z stderr P first 16 KiB of a longer line…
//! ```
//!
//! `F` ends a line, `P` marks a piece of one too long to hold. The live
//! file is `container.log`; when it would pass its size limit it becomes
//! `container.log.1` (older ones shift up, the oldest beyond the limit is
//! dropped). Readers open files oldest first.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::record::LogPolicy;

pub const LOG_FILE: &str = "container.log";
/// Longest piece written as one line; longer lines are split with `P`.
pub const MAX_LINE: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn as_str(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }
}

/// Writes whole lines from both streams to the rotating log.
#[derive(Debug)]
pub struct LogWriter {
    dir: PathBuf,
    policy: LogPolicy,
    file: File,
    size: u64,
    pending: [Vec<u8>; 2],
}

impl LogWriter {
    pub fn open(dir: &Path, policy: LogPolicy) -> io::Result<Self> {
        let path = dir.join(LOG_FILE);
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(Self { dir: dir.to_path_buf(), policy, file, size, pending: [Vec::new(), Vec::new()] })
    }

    /// Takes raw output of one stream; complete lines are written now.
    pub fn write(&mut self, stream: Stream, mut data: &[u8]) -> io::Result<()> {
        let i = stream as usize;
        while let Some(nl) = data.iter().position(|&b| b == b'\n') {
            let mut line = std::mem::take(&mut self.pending[i]);
            line.extend_from_slice(&data[..nl]);
            self.emit(stream, &line, true)?;
            data = &data[nl + 1..];
        }
        self.pending[i].extend_from_slice(data);
        while self.pending[i].len() >= MAX_LINE {
            let rest = self.pending[i].split_off(MAX_LINE);
            let piece = std::mem::replace(&mut self.pending[i], rest);
            self.emit(stream, &piece, false)?;
        }
        Ok(())
    }

    /// Writes what is left of a stream that has ended without a newline.
    pub fn finish(&mut self, stream: Stream) -> io::Result<()> {
        let rest = std::mem::take(&mut self.pending[stream as usize]);
        if !rest.is_empty() {
            self.emit(stream, &rest, true)?;
        }
        Ok(())
    }

    fn emit(&mut self, stream: Stream, text: &[u8], full: bool) -> io::Result<()> {
        let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        let mut line = Vec::with_capacity(text.len() + 48);
        line.extend_from_slice(time.as_bytes());
        line.extend_from_slice(format!(" {} {} ", stream.as_str(), if full { 'F' } else { 'P' }).as_bytes());
        line.extend_from_slice(text);
        line.push(b'\n');
        if self.size > 0 && self.size + line.len() as u64 > self.policy.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(&line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let name = |n: u32| self.dir.join(if n == 0 { LOG_FILE.to_owned() } else { format!("{LOG_FILE}.{n}") });
        if self.policy.max_files == 0 {
            fs::remove_file(name(0))?;
        } else {
            for n in (0..self.policy.max_files).rev() {
                match fs::rename(name(n), name(n + 1)) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
        }
        self.file = OpenOptions::new().create(true).append(true).open(name(0))?;
        self.size = 0;
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub time: String,
    pub stream: Stream,
    /// False for a piece of a longer line (`P`).
    pub full: bool,
    pub text: String,
}

impl LogLine {
    pub fn parse(line: &str) -> Option<Self> {
        let mut parts = line.splitn(4, ' ');
        let time = parts.next()?.to_owned();
        let stream = match parts.next()? {
            "stdout" => Stream::Stdout,
            "stderr" => Stream::Stderr,
            _ => return None,
        };
        let full = match parts.next()? {
            "F" => true,
            "P" => false,
            _ => return None,
        };
        Some(Self { time, stream, full, text: parts.next().unwrap_or_default().to_owned() })
    }
}

/// The log files of a container directory, oldest first.
pub fn files(dir: &Path) -> Vec<PathBuf> {
    let mut rotated: Vec<(u32, PathBuf)> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let n = name.strip_prefix(LOG_FILE)?.strip_prefix('.')?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    rotated.sort_by_key(|r| std::cmp::Reverse(r.0));
    let mut out: Vec<PathBuf> = rotated.into_iter().map(|(_, p)| p).collect();
    let live = dir.join(LOG_FILE);
    if live.exists() {
        out.push(live);
    }
    out
}

/// Every log line kept, oldest first; the last `tail` when given, read
/// from the ends of the files so a long log costs only what is asked for.
pub fn read(dir: &Path, tail: Option<usize>) -> io::Result<Vec<LogLine>> {
    if let Some(n) = tail {
        return last(dir, n, TAIL_CHUNK);
    }
    let mut lines = Vec::new();
    for file in files(dir) {
        let text = fs::read(&file)?;
        lines.extend(String::from_utf8_lossy(&text).lines().filter_map(LogLine::parse));
    }
    Ok(lines)
}

/// Bytes read at a time, backwards, for a tail.
const TAIL_CHUNK: u64 = 64 * 1024;

/// The last `n` lines, newest file first and each file from its end in
/// pieces of `chunk` bytes, stopping as soon as there are enough.
fn last(dir: &Path, n: usize, chunk: u64) -> io::Result<Vec<LogLine>> {
    use std::os::unix::fs::FileExt;
    let mut newest_first = Vec::new();
    for path in files(dir).iter().rev() {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue, // rotated away meanwhile
            Err(e) => return Err(e),
        };
        let mut end = file.metadata()?.len();
        // The bytes after `end` that begin a line further back.
        let mut carry = Vec::new();
        while end > 0 && newest_first.len() < n {
            let start = end.saturating_sub(chunk);
            let mut piece = vec![0; (end - start) as usize];
            file.read_exact_at(&mut piece, start)?;
            piece.extend_from_slice(&carry);
            // Whole lines begin after the first newline, or at the file's start.
            let whole = match piece.iter().position(|&b| b == b'\n') {
                _ if start == 0 => 0,
                Some(nl) => nl + 1,
                None => piece.len(),
            };
            carry = piece[..whole].to_vec();
            for line in String::from_utf8_lossy(&piece[whole..]).lines().rev() {
                if newest_first.len() == n {
                    break;
                }
                newest_first.extend(LogLine::parse(line));
            }
            end = start;
        }
        if newest_first.len() == n {
            break;
        }
    }
    newest_first.reverse();
    Ok(newest_first)
}

/// Reads lines as they are written to the live file, across rotations.
#[derive(Debug)]
pub struct Follower {
    path: PathBuf,
    file: Option<(File, u64)>,
    partial: Vec<u8>,
}

impl Follower {
    /// Follows from the start of the live file.
    pub fn from_start(dir: &Path) -> Self {
        Self { path: dir.join(LOG_FILE), file: None, partial: Vec::new() }
    }

    /// Follows from the current end of the live file.
    pub fn from_end(dir: &Path) -> io::Result<Self> {
        use std::io::Seek;
        let mut f = Self::from_start(dir);
        if let Ok(mut file) = File::open(&f.path) {
            let ino = std::os::unix::fs::MetadataExt::ino(&file.metadata()?);
            file.seek(io::SeekFrom::End(0))?;
            f.file = Some((file, ino));
        }
        Ok(f)
    }

    /// The lines written since the last call.
    pub fn poll(&mut self) -> io::Result<Vec<LogLine>> {
        use std::io::Read;
        use std::os::unix::fs::MetadataExt;
        let mut data = Vec::new();
        let current = fs::metadata(&self.path).ok().map(|m| m.ino());
        if let Some((file, ino)) = self.file.as_mut() {
            file.read_to_end(&mut data)?;
            if current.is_some_and(|c| c != *ino) {
                self.file = None; // rotated: the old file is drained, move on
            }
        }
        if self.file.is_none() {
            if let Ok(mut file) = File::open(&self.path) {
                let ino = file.metadata()?.ino();
                file.read_to_end(&mut data)?;
                self.file = Some((file, ino));
            }
        }
        self.partial.extend_from_slice(&data);
        let Some(end) = self.partial.iter().rposition(|&b| b == b'\n') else { return Ok(Vec::new()) };
        let rest = self.partial.split_off(end + 1);
        let complete = std::mem::replace(&mut self.partial, rest);
        Ok(String::from_utf8_lossy(&complete).lines().filter_map(LogLine::parse).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(dir: &Path) -> Vec<String> {
        read(dir, None).unwrap().into_iter().map(|l| l.text).collect()
    }

    #[test]
    fn lines_are_split_and_tagged_by_stream() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = LogWriter::open(dir.path(), LogPolicy::default()).unwrap();
        w.write(Stream::Stdout, b"hel").unwrap();
        w.write(Stream::Stderr, b"oops\n").unwrap();
        w.write(Stream::Stdout, b"lo\nworld").unwrap();
        w.finish(Stream::Stdout).unwrap();
        let lines = read(dir.path(), None).unwrap();
        let got: Vec<_> = lines.iter().map(|l| (l.stream, l.full, l.text.as_str())).collect();
        assert_eq!(
            got,
            [(Stream::Stderr, true, "oops"), (Stream::Stdout, true, "hello"), (Stream::Stdout, true, "world")]
        );
        assert!(lines[0].time.ends_with('Z') && lines[0].time.len() == 30, "{}", lines[0].time);
    }

    #[test]
    fn long_lines_become_partial_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = LogWriter::open(dir.path(), LogPolicy::default()).unwrap();
        let long = vec![b'x'; MAX_LINE * 2 + 10];
        w.write(Stream::Stdout, &long).unwrap();
        w.write(Stream::Stdout, b"\n").unwrap();
        let lines = read(dir.path(), None).unwrap();
        assert_eq!(
            lines.iter().map(|l| (l.full, l.text.len())).collect::<Vec<_>>(),
            [(false, MAX_LINE), (false, MAX_LINE), (true, 10)]
        );
    }

    #[test]
    fn rotation_keeps_the_newest_lines_within_the_limits() {
        let dir = tempfile::tempdir().unwrap();
        let policy = LogPolicy { max_bytes: 200, max_files: 2 };
        let mut w = LogWriter::open(dir.path(), policy).unwrap();
        for i in 0..100 {
            w.write(Stream::Stdout, format!("line {i}\n").as_bytes()).unwrap();
        }
        let names: Vec<_> =
            files(dir.path()).iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["container.log.2", "container.log.1", "container.log"]);
        for f in files(dir.path()) {
            assert!(fs::metadata(&f).unwrap().len() <= 200);
        }
        let kept = texts(dir.path());
        assert_eq!(kept.last().unwrap(), "line 99");
        let first: usize = kept[0].strip_prefix("line ").unwrap().parse().unwrap();
        assert_eq!(kept, (first..100).map(|i| format!("line {i}")).collect::<Vec<_>>(), "contiguous, oldest first");
        assert_eq!(read(dir.path(), Some(2)).unwrap().len(), 2);
    }

    #[test]
    fn a_follower_sees_every_line_once_across_rotations() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = LogWriter::open(dir.path(), LogPolicy { max_bytes: 300, max_files: 3 }).unwrap();
        let mut follower = Follower::from_start(dir.path());
        let mut seen = Vec::new();
        for i in 0..60 {
            w.write(Stream::Stdout, format!("line {i}\n").as_bytes()).unwrap();
            if i % 3 == 0 {
                seen.extend(follower.poll().unwrap().into_iter().map(|l| l.text));
            }
        }
        seen.extend(follower.poll().unwrap().into_iter().map(|l| l.text));
        assert_eq!(seen, (0..60).map(|i| format!("line {i}")).collect::<Vec<_>>());
    }

    #[test]
    fn a_tail_read_from_the_end_is_the_end_of_the_whole_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = LogWriter::open(dir.path(), LogPolicy { max_bytes: 700, max_files: 3 }).unwrap();
        for i in 0..80 {
            // Lines of many lengths, some longer than a read piece.
            w.write(Stream::Stdout, format!("line {i} {}\n", "é".repeat(i % 13)).as_bytes()).unwrap();
        }
        std::fs::OpenOptions::new().append(true).open(dir.path().join(LOG_FILE)).unwrap().write_all(b"junk\n").unwrap();
        let all = read(dir.path(), None).unwrap();
        assert!(files(dir.path()).len() > 2, "the lines span rotated files");
        for chunk in [1, 7, 64, TAIL_CHUNK] {
            for n in [0, 1, 5, 17, 40, all.len(), all.len() + 10] {
                let tail = last(dir.path(), n, chunk).unwrap();
                assert_eq!(tail, all[all.len().saturating_sub(n)..], "{n} lines in pieces of {chunk}");
            }
        }
        assert_eq!(read(dir.path(), Some(3)).unwrap(), all[all.len() - 3..]);
    }

    #[test]
    fn foreign_lines_are_skipped() {
        assert_eq!(LogLine::parse("garbage"), None);
        assert_eq!(LogLine::parse("t stdout X text"), None);
        assert_eq!(LogLine::parse("t stdout F").unwrap().text, "");
    }
}
