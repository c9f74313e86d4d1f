/*
 * LD_PRELOAD shim for the durability tests: logs, to the file named by
 * $SYNC_LOG, every fdatasync and fsync a program completes and every
 * unlink it starts, with the path the descriptor has at that moment (so
 * a spool file synced under its temporary name shows that name). An
 * fsync of a directory also logs the entries the directory held when the
 * sync began: those names are durable once it returns. One write(2) per
 * line, O_APPEND, so threads do not interleave.
 *
 * What the shipped code calls through libc (Rust's std: File::sync_data,
 * File::sync_all, fs::remove_file) is seen; raw system calls are not.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int log_fd = -1;

__attribute__((constructor)) static void open_log(void)
{
	const char *path = getenv("SYNC_LOG");
	if (path)
		log_fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
}

static void say(const char *line, size_t len)
{
	if (log_fd >= 0)
		(void)!write(log_fd, line, len);
}

static void path_of(int fd, char *buf, size_t size)
{
	char link[64];
	snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
	ssize_t n = readlink(link, buf, size - 1);
	buf[n < 0 ? 0 : n] = '\0';
}

int fdatasync(int fd)
{
	static int (*real)(int);
	char path[4096], line[4200];
	if (!real)
		real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
	path_of(fd, path, sizeof path);
	int r = real(fd);
	if (r == 0)
		say(line, (size_t)snprintf(line, sizeof line, "fdatasync %s\n", path));
	return r;
}

int fsync(int fd)
{
	static int (*real)(int);
	static char listing[1 << 20];
	char path[4096];
	struct stat st;
	size_t len = 0;
	if (!real)
		real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
	path_of(fd, path, sizeof path);
	int is_dir = fstat(fd, &st) == 0 && S_ISDIR(st.st_mode);
	static pthread_mutex_t listing_lock = PTHREAD_MUTEX_INITIALIZER;
	if (is_dir) {
		/* The buffer is static to keep the stack small, so one
		 * directory sync at a time is logged. */
		pthread_mutex_lock(&listing_lock);
		len = (size_t)snprintf(listing, sizeof listing, "dirsync %s", path);
		DIR *d = opendir(path);
		struct dirent *e;
		while (d && (e = readdir(d)) && len + 300 < sizeof listing)
			if (e->d_name[0] != '.')
				len += (size_t)snprintf(listing + len, sizeof listing - len, " %s", e->d_name);
		if (d)
			closedir(d);
		listing[len++] = '\n';
	}
	int r = real(fd);
	if (r == 0 && !is_dir) {
		char line[4200];
		say(line, (size_t)snprintf(line, sizeof line, "fsync %s\n", path));
	}
	if (is_dir) {
		if (r == 0)
			say(listing, len);
		pthread_mutex_unlock(&listing_lock);
	}
	return r;
}

int unlink(const char *p)
{
	static int (*real)(const char *);
	char line[4200];
	if (!real)
		real = (int (*)(const char *))dlsym(RTLD_NEXT, "unlink");
	say(line, (size_t)snprintf(line, sizeof line, "unlink %s\n", p));
	return real(p);
}
