<?php
// This file is part of Moodle - https://moodle.org/
//
// Moodle is free software: you can redistribute it and/or modify
// it under the terms of the GNU General Public License as published by
// the Free Software Foundation, either version 3 of the License, or
// (at your option) any later version.
//
// Moodle is distributed in the hope that it will be useful,
// but WITHOUT ANY WARRANTY; without even the implied warranty of
// MERCHANTABILITY or FITNESS FOR A PARTICULAR PURPOSE.  See the
// GNU General Public License for more details.
//
// You should have received a copy of the GNU General Public License
// along with Moodle.  If not, see <https://www.gnu.org/licenses/>.

/**
 * Plain php-cli tests of the real classes/log/store.php and classes/privacy/provider.php (no Moodle needed).
 *
 * Usage: php run_tests.php [--filter=SUBSTRING]
 * Prints one line per test and a summary; exit status 0 only when every test passed.
 * (run_tests.php --child=... is how the tests run parts of themselves in a separate process.)
 *
 * @package    logstore_tsdb
 * @copyright  2025 moodle-tsdb-shipper contributors
 * @license    https://www.gnu.org/copyleft/gpl.html GNU GPL v3 or later
 */

require_once(__DIR__ . '/harness.php');
require_once(__DIR__ . '/privacy_stubs.php');
require_once(__DIR__ . '/../classes/privacy/provider.php');

error_reporting(E_ALL);
set_error_handler(function ($severity, $message, $file, $line) {
    // A warning or notice the store did not silence is a bug: it would show up in the user's page.
    if (error_reporting() & $severity) {
        throw new ErrorException($message, 0, $severity, $file, $line);
    }
    return false;
});

/** Thrown by check(). */
class check_failed extends Exception {
}

/**
 * Assert a condition.
 *
 * @param bool $condition
 * @param string $message
 * @return void
 */
function check($condition, $message) {
    if (!$condition) {
        throw new check_failed($message);
    }
}

/**
 * A new empty temporary directory, removed at exit.
 *
 * @return string
 */
function tempdir() {
    static $dirs = [];
    if (!$dirs) {
        register_shutdown_function(function () use (&$dirs) {
            foreach ($dirs as $dir) {
                exec('rm -rf ' . escapeshellarg($dir));
            }
        });
    }
    $dir = sys_get_temp_dir() . '/logstore_tsdb_test_' . getmypid() . '_' . bin2hex(random_bytes(4));
    mkdir($dir, 0777);
    chmod($dir, 0777);
    $dirs[] = $dir;
    return $dir;
}

/**
 * All lines of all spool files in $dir, checked to be complete ("\n"-terminated) valid UTF-8 JSON objects.
 *
 * @param string $dir
 * @return array decoded lines
 */
function spool_lines($dir) {
    $events = [];
    $files = glob($dir . '/*.jsonl');
    sort($files);
    foreach ($files as $file) {
        $data = file_get_contents($file);
        if ($data === '') {
            continue;
        }
        check(substr($data, -1) === "\n", basename($file) . ' does not end with a newline');
        foreach (explode("\n", substr($data, 0, -1)) as $n => $line) {
            check(preg_match('//u', $line) === 1, basename($file) . ':' . ($n + 1) . ' is not valid UTF-8');
            $decoded = json_decode($line, true);
            check(is_array($decoded), basename($file) . ':' . ($n + 1) . ' is not a JSON object: '
                . substr($line, 0, 200));
            $events[] = $decoded;
        }
    }
    return $events;
}

/**
 * Point PHP's error_log() at a fresh file and return its path.
 *
 * @return string
 */
function capture_error_log() {
    $file = tempdir() . '/php-error.log';
    touch($file);
    ini_set('error_log', $file);
    return $file;
}

/**
 * Lines in a captured error log.
 *
 * @param string $file
 * @return array
 */
function error_log_lines($file) {
    clearstatcache();
    return array_values(array_filter(explode("\n", (string)file_get_contents($file)), 'strlen'));
}

/**
 * Run this script as a child process, return [exit code, stdout, stderr].
 *
 * @param array $args
 * @return array
 */
function run_child(array $args) {
    $cmd = array_merge([PHP_BINARY, __FILE__], $args);
    $proc = proc_open($cmd, [1 => ['pipe', 'w'], 2 => ['pipe', 'w']], $pipes);
    $out = stream_get_contents($pipes[1]);
    $err = stream_get_contents($pipes[2]);
    fclose($pipes[1]);
    fclose($pipes[2]);
    return [proc_close($proc), $out, $err];
}

// ---------------------------------------------------------------------------------------------------------
// Tests.

/**
 * One line per event with the 17 fields of get_data(), origin, ip, realuserid and timecreated_us, typed.
 */
function test_fields_and_types() {
    $dir = tempdir();
    $store = harness_store(['spooldir' => $dir]);
    $GLOBALS['USER'] = (object)['id' => 5];
    $GLOBALS['PAGE'] = (object)['requestorigin' => 'web', 'requestip' => '203.0.113.9'];
    $data = harness_event_data(['other' => ['a' => 1, 'url' => 'https://x.test/a/b'], 'relateduserid' => 9]);
    $store->write(\core\event\harness_event::harness_create($data));
    $store->dispose();

    $lines = spool_lines($dir);
    check(count($lines) === 1, 'expected 1 line, got ' . count($lines));
    $e = $lines[0];
    $expected = array_merge(HARNESS_EVENT_KEYS, ['origin', 'ip', 'realuserid', 'timecreated_us']);
    check(array_keys($e) === $expected, 'keys: ' . implode(',', array_keys($e)));
    foreach (HARNESS_EVENT_KEYS as $key) {
        check($e[$key] === $data[$key], "{$key}: " . var_export($e[$key], true));
    }
    foreach (['eventname', 'component', 'action', 'target', 'objecttable', 'crud', 'origin', 'ip'] as $key) {
        check(is_string($e[$key]), "{$key} is not a string");
    }
    foreach (['objectid', 'edulevel', 'contextid', 'contextlevel', 'contextinstanceid', 'userid', 'courseid',
            'relateduserid', 'anonymous', 'timecreated', 'timecreated_us'] as $key) {
        check(is_int($e[$key]), "{$key} is not an integer");
    }
    check($e['realuserid'] === null, 'realuserid without login-as must be null');
    check($e['origin'] === 'web' && $e['ip'] === '203.0.113.9', 'origin/ip not taken from $PAGE');
    check(intdiv($e['timecreated_us'], 1000000) === $data['timecreated'], 'timecreated_us not in timecreated\'s second');
    $raw = file_get_contents(glob($dir . '/*.jsonl')[0]);
    check(strpos($raw, 'https://x.test/a/b') !== false, 'slashes are escaped (JSON_UNESCAPED_SLASHES missing)');
}

/**
 * Anonymous events are written like any other.
 */
function test_anonymous_events_are_written() {
    $dir = tempdir();
    $store = harness_store(['spooldir' => $dir]);
    $store->write(harness_event(['anonymous' => 1, 'objectid' => 1]));
    $store->write(harness_event(['anonymous' => 0, 'objectid' => 2]));
    $store->dispose();
    $lines = spool_lines($dir);
    check(count($lines) === 2, 'expected 2 lines, got ' . count($lines));
    check($lines[0]['anonymous'] === 1 && $lines[0]['objectid'] === 1, 'anonymous event missing');
}

/**
 * 'Login as': realuserid is the real user's id, userid the impersonated one.
 */
function test_login_as() {
    $dir = tempdir();
    $store = harness_store(['spooldir' => $dir]);
    $GLOBALS['USER'] = (object)['id' => 77, 'realuser' => 2];
    $store->write(harness_event(['userid' => 77]));
    $GLOBALS['USER'] = (object)['id' => 77];
    $store->write(harness_event(['userid' => 77]));
    $store->dispose();
    $lines = spool_lines($dir);
    check($lines[0]['realuserid'] === 2 && $lines[0]['userid'] === 77, 'login-as realuserid wrong: '
        . json_encode($lines[0]['realuserid']));
    check($lines[1]['realuserid'] === null, 'realuserid after login-as ended must be null');
}

/**
 * Invalid UTF-8 in `other` costs nothing but the bad bytes: one valid line, U+FFFD in their place.
 */
function test_invalid_utf8_in_other() {
    $dir = tempdir();
    $store = harness_store(['spooldir' => $dir]);
    $other = ['bad' => "caf\xe9 \xff\xfe end", 'good' => 'ünïcødé ✓', "k\xc3" => 1];
    $store->write(harness_event(['other' => $other, 'objectid' => 1]));
    $store->write(harness_event(['objectid' => 2]));
    $store->dispose();
    $lines = spool_lines($dir);
    check(count($lines) === 2, 'expected 2 lines, got ' . count($lines));
    check($lines[0]['other']['bad'] === "caf\u{FFFD} \u{FFFD}\u{FFFD} end", 'bad bytes not substituted: '
        . json_encode($lines[0]['other']['bad']));
    check($lines[0]['other']['good'] === 'ünïcødé ✓', 'unicode mangled');
    $raw = file_get_contents(glob($dir . '/*.jsonl')[0]);
    check(strpos($raw, 'ünïcødé ✓') !== false, 'unicode is escaped (JSON_UNESCAPED_UNICODE missing)');
}

/**
 * Values json_encode cannot represent (INF, NAN) become null; the event is still written.
 */
function test_unencodable_values() {
    $dir = tempdir();
    $store = harness_store(['spooldir' => $dir]);
    $store->write(harness_event(['other' => ['x' => INF, 'y' => 'kept'], 'objectid' => 1]));
    $store->dispose();
    $lines = spool_lines($dir);
    check(count($lines) === 1, 'event with INF lost');
    check($lines[0]['objectid'] === 1, 'event with INF mangled');
}

/**
 * Nothing is written before N events; every N events one append; dispose() writes the rest.
 */
function test_flush_every_and_dispose() {
    $dir = tempdir();
    $store = harness_store(['spooldir' => $dir, 'flushevery' => 3]);
    $store->write(harness_event(['objectid' => 1]));
    $store->write(harness_event(['objectid' => 2]));
    check(spool_lines($dir) === [], 'written before the buffer was full');
    check($store->get_buffered_count() === 2, 'buffer count wrong');
    $store->write(harness_event(['objectid' => 3]));
    check(count(spool_lines($dir)) === 3, 'not flushed at N events');
    $store->write(harness_event(['objectid' => 4]));
    check(count(spool_lines($dir)) === 3, 'flushed early');
    $store->dispose();
    $ids = array_column(spool_lines($dir), 'objectid');
    check($ids === [1, 2, 3, 4], 'order or content wrong: ' . json_encode($ids));
    $store->dispose();
    check(count(spool_lines($dir)) === 4, 'second dispose wrote again');
}

/**
 * One file per UTC hour and host: moodle-events-YYYYMMDDHH-<host>.jsonl; settings cleaned for file names.
 */
function test_file_names() {
    $dir = tempdir();
    $store = harness_store(['spooldir' => $dir . '/']);
    $host = preg_replace('/[^A-Za-z0-9._-]+/', '_', gethostname());
    $t = gmmktime(23, 59, 59, 12, 31, 2024);
    check($store->get_spool_path($t) === "{$dir}/moodle-events-2024123123-" . trim($host, '._') . '.jsonl',
        'default name wrong: ' . $store->get_spool_path($t));
    $old = date_default_timezone_get();
    date_default_timezone_set('Pacific/Auckland');
    try {
        check(basename($store->get_spool_path($t)) === 'moodle-events-2024123123-' . trim($host, '._') . '.jsonl',
            'hour is not UTC');
    } finally {
        date_default_timezone_set($old);
    }
    $store = harness_store(['spooldir' => $dir, 'fileprefix' => 'site a/../x', 'hostname' => 'web/01 ']);
    check(basename($store->get_spool_path($t)) === 'site_a_.._x-2024123123-web_01.jsonl',
        'unsafe settings not cleaned: ' . basename($store->get_spool_path($t)));
    check(dirname($store->get_spool_path($t)) === $dir, 'prefix escaped the spool dir');
}

/**
 * Guests and visitors are logged unless the setting says not to.
 */
function test_guests() {
    foreach ([[[], true], [['logguests' => '1'], true], [['logguests' => '0'], false]] as [$config, $logged]) {
        $dir = tempdir();
        $store = harness_store(['spooldir' => $dir] + $config);
        $GLOBALS['USER'] = (object)['id' => 1];
        $store->write(harness_event(['userid' => 1, 'objectid' => 1]));
        $GLOBALS['USER'] = (object)['id' => 0];
        $store->write(harness_event(['userid' => 0, 'objectid' => 2]));
        $GLOBALS['USER'] = (object)['id' => 5];
        $store->write(harness_event(['userid' => 5, 'objectid' => 3]));
        $store->dispose();
        $ids = array_column(spool_lines($dir), 'objectid');
        $expected = $logged ? [1, 2, 3] : [3];
        check($ids === $expected, 'config ' . json_encode($config) . ': logged ' . json_encode($ids));
    }
}

/**
 * Events named in the skip list are not written (leading backslash and case do not matter).
 */
function test_skip_list() {
    $dir = tempdir();
    $store = harness_store(['spooldir' => $dir,
        'skipevents' => "core\\event\\Course_Viewed\r\n \\mod_forum\\event\\discussion_viewed, \\x\\y"]);
    $store->write(harness_event(['eventname' => '\\core\\event\\course_viewed', 'objectid' => 1]));
    $store->write(harness_event(['eventname' => '\\mod_forum\\event\\discussion_viewed', 'objectid' => 2]));
    $store->write(harness_event(['eventname' => '\\core\\event\\user_loggedin', 'objectid' => 3]));
    $store->dispose();
    check(array_column(spool_lines($dir), 'objectid') === [3], 'skip list not applied');
}

/**
 * timecreated_us is integer microseconds, and always within the event's timecreated second.
 */
function test_timecreated_us() {
    $dir = tempdir();
    $store = harness_store(['spooldir' => $dir]);
    $past = time() - 3600;
    $store->write(harness_event(['timecreated' => $past, 'objectid' => 1]));
    $store->write(harness_event(['timecreated' => (string)time(), 'objectid' => 2]));
    for ($i = 3; $i < 50; $i++) {
        $store->write(harness_event(['objectid' => $i]));
    }
    $store->dispose();
    $lines = spool_lines($dir);
    check($lines[0]['timecreated_us'] === $past * 1000000 + 999999, 'late write not clamped into its second');
    $previous = 0;
    foreach ($lines as $line) {
        check(intdiv($line['timecreated_us'], 1000000) === (int)$line['timecreated'], 'second mismatch');
        if ($line['objectid'] > 1) {
            check($line['timecreated_us'] >= $previous, 'timecreated_us goes backwards');
            $previous = $line['timecreated_us'];
        }
    }
}

/**
 * A spool that cannot be written never throws: reported once (debugging + error_log), events kept in memory
 * for the next flush of the request, and the loss counted in error_log at dispose() if it never recovers.
 */
function test_unwritable_spool() {
    $base = tempdir();
    $notadir = $base . '/plain-file';
    file_put_contents($notadir, 'x');
    $devfull = tempdir();
    $cases = [
        'missing directory' => [$base . '/missing', function () use ($base) {
            mkdir($base . '/missing');
        }],
        'spool dir is a file' => [$notadir . '/sub', null],
        'disk full (/dev/full)' => [$devfull, null],
    ];
    foreach ($cases as $name => [$dir, $repair]) {
        $log = capture_error_log();
        $store = harness_store(['spooldir' => $dir, 'flushevery' => 2]);
        if ($name === 'disk full (/dev/full)') {
            symlink('/dev/full', $store->get_spool_path());
        }
        for ($i = 1; $i <= 9; $i++) {
            $store->write(harness_event(['objectid' => $i]));    // Must not throw.
        }
        check(count($GLOBALS['HARNESS_DEBUGGING']) === 1, "{$name}: debugging() called "
            . count($GLOBALS['HARNESS_DEBUGGING']) . ' times, expected once');
        check(count(error_log_lines($log)) === 1, "{$name}: error_log written "
            . count(error_log_lines($log)) . ' times, expected once');
        check(strpos($GLOBALS['HARNESS_DEBUGGING'][0], 'logstore_tsdb') !== false, 'message does not name the plugin');
        check($store->get_buffered_count() === 9, "{$name}: events not kept for retry");
        if ($repair) {
            $repair();
            $store->dispose();
            check(array_column(spool_lines($dir), 'objectid') === range(1, 9), "{$name}: retry did not write all"
                . ' events exactly once');
            check(count(error_log_lines($log)) === 1, "{$name}: recovered, yet reported again");
        } else {
            $store->dispose();
            $lines = error_log_lines($log);
            check(count($lines) === 2 && strpos($lines[1], '9 event(s)') !== false,
                "{$name}: loss not counted at dispose: " . json_encode($lines));
            check(count($GLOBALS['HARNESS_DEBUGGING']) === 1, "{$name}: debugging() called again at dispose");
        }
        ini_restore('error_log');
    }
}

/**
 * After a failed flush the next attempt comes N events later, not at every event (a full disk must not turn
 * each write() into an open() and a failed write of a growing buffer).
 */
function test_retry_after_n_more_events() {
    $base = tempdir();
    $dir = $base . '/later';
    capture_error_log();
    $store = harness_store(['spooldir' => $dir, 'flushevery' => 2]);
    $store->write(harness_event(['objectid' => 1]));
    $store->write(harness_event(['objectid' => 2]));    // Flush fails: no directory.
    mkdir($dir);
    $store->write(harness_event(['objectid' => 3]));
    check(spool_lines($dir) === [] && $store->get_buffered_count() === 3, 'retried at the very next event');
    $store->write(harness_event(['objectid' => 4]));
    check(array_column(spool_lines($dir), 'objectid') === [1, 2, 3, 4], 'not retried N events later');
    $store->dispose();
    ini_restore('error_log');
}

/**
 * Permission denied (as an unprivileged user: root ignores file modes, so the child drops to nobody).
 */
function test_permission_denied() {
    $dir = tempdir();
    chmod($dir, 0555);
    [$code, $out, $err] = run_child(['--child=readonly', $dir]);
    check($code === 0, "child failed ({$code}): {$out} {$err}");
    check(trim($out) === 'ok', "child: {$out} {$err}");
    check(glob($dir . '/*') === [], 'something was written to a read-only directory');
}

/**
 * Child of test_permission_denied.
 *
 * @param string $dir
 */
function child_readonly($dir) {
    if (function_exists('posix_getuid') && posix_getuid() === 0) {
        check(posix_setgid(65534) && posix_setuid(65534), 'cannot drop to nobody');
    }
    $log = capture_error_log();
    $store = harness_store(['spooldir' => $dir, 'flushevery' => 1]);
    for ($i = 1; $i <= 5; $i++) {
        $store->write(harness_event(['objectid' => $i]));
    }
    check(count($GLOBALS['HARNESS_DEBUGGING']) === 1, 'debugging() not called exactly once');
    check(strpos($GLOBALS['HARNESS_DEBUGGING'][0], 'ermission denied') !== false, 'reason not reported: '
        . $GLOBALS['HARNESS_DEBUGGING'][0]);
    check($store->get_buffered_count() === 5, 'events not kept');
    $store->dispose();
    check(count(error_log_lines($log)) === 2, 'error_log lines: ' . json_encode(error_log_lines($log)));
    echo "ok\n";
}

/**
 * A short write (file size limit reached mid-buffer) leaves no half line: the file holds only complete
 * lines, the events written stay written, the others stay buffered and are written once the limit is lifted.
 */
function test_short_write() {
    $dir = tempdir();
    [$code, $out, $err] = run_child(['--child=shortwrite', $dir]);
    check($code === 0, "child failed ({$code}): {$out} {$err}");
    check(trim($out) === 'ok', "child: {$out} {$err}");
}

/**
 * Child of test_short_write.
 *
 * @param string $dir
 */
function child_shortwrite($dir) {
    check(function_exists('posix_setrlimit') && function_exists('pcntl_signal'), 'needs posix and pcntl');
    pcntl_signal(SIGXFSZ, SIG_IGN);    // Else the kernel kills us at the limit instead of a short write.
    $store = harness_store(['spooldir' => $dir, 'flushevery' => 1000]);
    $path = $store->get_spool_path();
    file_put_contents($path, "{\"eventname\":\"earlier\",\"timecreated\":1}\n");
    for ($i = 1; $i <= 100; $i++) {
        $store->write(harness_event(['objectid' => $i]));
    }
    $limits = posix_getrlimit();
    $limit = 20000;
    check(posix_setrlimit(POSIX_RLIMIT_FSIZE, $limit, (int)$limits['hard filesize'] ?: POSIX_RLIMIT_INFINITY),
        'cannot set RLIMIT_FSIZE');
    $log = capture_error_log();
    check($store->flush() === false, 'flush past the size limit reported success');
    clearstatcache();
    $data = file_get_contents($path);
    check(strlen($data) <= $limit && strlen($data) > 1000, 'unexpected size ' . strlen($data));
    check(substr($data, -1) === "\n", 'a half line was left in the file');
    $inFile = count(spool_lines($dir)) - 1;
    check($inFile > 0 && $store->get_buffered_count() === 100 - $inFile,
        "complete lines in file ({$inFile}) + buffered ({$store->get_buffered_count()}) != 100");
    check(count($GLOBALS['HARNESS_DEBUGGING']) === 1 && strpos($GLOBALS['HARNESS_DEBUGGING'][0], 'short write') !== false,
        'short write not reported: ' . json_encode($GLOBALS['HARNESS_DEBUGGING']));
    check(posix_setrlimit(POSIX_RLIMIT_FSIZE, POSIX_RLIMIT_INFINITY, POSIX_RLIMIT_INFINITY)
        || posix_setrlimit(POSIX_RLIMIT_FSIZE, (int)$limits['hard filesize'], (int)$limits['hard filesize']),
        'cannot lift the limit');
    $store->dispose();
    $ids = array_column(array_slice(spool_lines($dir), 1), 'objectid');
    check($ids === range(1, 100), 'after the retry the events are not all there exactly once');
    check(count(error_log_lines($log)) === 1, 'reported more than once');
    echo "ok\n";
}

/**
 * A line left without its newline (a writer killed mid-write) is ended before the next append, so it can
 * never swallow another event.
 */
function test_partial_line_is_ended() {
    $dir = tempdir();
    $store = harness_store(['spooldir' => $dir]);
    file_put_contents($store->get_spool_path(), '{"eventname":"x","timecre');
    $store->write(harness_event(['objectid' => 1]));
    $store->dispose();
    $lines = explode("\n", file_get_contents($store->get_spool_path()));
    check(count($lines) === 3 && $lines[0] === '{"eventname":"x","timecre' && $lines[2] === '',
        'partial line not ended: ' . json_encode($lines));
    check(json_decode($lines[1], true)['objectid'] === 1, 'event line damaged');
}

/**
 * A file unlinked (spool housekeeping) while a writer waits for its lock is reopened, not written to the
 * deleted inode.
 */
function test_unlinked_file_is_reopened() {
    $dir = tempdir();
    $store = harness_store(['spooldir' => $dir]);
    $path = $store->get_spool_path();
    $fh = fopen($path, 'a');
    check(flock($fh, LOCK_EX), 'cannot lock');
    $proc = proc_open([PHP_BINARY, __DIR__ . '/emit_events.php', $dir, '5', '--host=' . explode('-', basename($path, '.jsonl'), 4)[3]],
        [1 => ['file', $dir . '/child.out', 'w'], 2 => ['file', $dir . '/child.err', 'w']], $pipes);
    // Give the child time to open the file and block on the lock. If it is slower, it simply opens the
    // new file and the test passes without exercising the retry: never a false failure.
    usleep(500000);
    unlink($path);
    flock($fh, LOCK_UN);
    fclose($fh);
    $code = proc_close($proc);
    check($code === 0, 'emitter failed: ' . file_get_contents($dir . '/child.err'));
    check(file_exists($path), 'the file was not created again');
    check(count(spool_lines($dir)) === 5, 'events written to the deleted file');
}

/**
 * 50 php processes appending 2,000 events each to the same hour file: exactly 100,000 intact lines, each
 * event once, each writer's events in order.
 */
function test_concurrent_writers() {
    $dir = tempdir();
    $workers = 50;
    $each = 2000;
    $flush = [1, 7, 50, 500];
    $start = microtime(true) + 1.5;
    $procs = [];
    for ($w = 1; $w <= $workers; $w++) {
        $cmd = [PHP_BINARY, __DIR__ . '/emit_events.php', $dir, (string)$each, "--worker={$w}",
            '--flush-every=' . $flush[$w % count($flush)], '--host=shared', '--start-at=' . sprintf('%.6f', $start)];
        $procs[$w] = proc_open($cmd, [1 => ['file', "{$dir}/w{$w}.out", 'w'], 2 => ['file', "{$dir}/w{$w}.err", 'w']],
            $pipes);
        check(is_resource($procs[$w]), "cannot start worker {$w}");
    }
    $failed = [];
    foreach ($procs as $w => $proc) {
        if (proc_close($proc) !== 0) {
            $failed[] = "worker {$w}: " . file_get_contents("{$dir}/w{$w}.err");
        }
    }
    check(!$failed, implode('; ', $failed));
    $files = glob($dir . '/*.jsonl');
    check(count($files) >= 1 && count($files) <= 2, 'expected the hour file (two across an hour change), got '
        . count($files));

    $lines = spool_lines($dir);    // Every line complete, valid UTF-8, a JSON object.
    check(count($lines) === $workers * $each, 'expected ' . ($workers * $each) . ' lines, got ' . count($lines));
    $seen = [];
    $last = [];
    $switches = 0;
    $previous = null;
    foreach ($lines as $line) {
        check(count($line) === 21, 'line with ' . count($line) . ' keys');
        $id = $line['objectid'];
        check(!isset($seen[$id]), "event {$id} written twice");
        $seen[$id] = true;
        $w = intdiv($id, 1000000);
        $switches += $previous !== null && $previous !== $w ? 1 : 0;
        $previous = $w;
        check(!isset($last[$w]) || $last[$w] < $id, "worker {$w}'s events out of order");
        $last[$w] = $id;
    }
    for ($w = 1; $w <= $workers; $w++) {
        for ($i = 0; $i < $each; $i++) {
            check(isset($seen[$w * 1000000 + $i]), "event {$w}:{$i} missing");
        }
    }
    // How often consecutive lines come from different writers: shows that the writers really overlapped.
    return sprintf('%d lines in %d file(s), writer changed %d times', count($lines), count($files), $switches);
}

/**
 * The privacy provider implements the interfaces with Moodle's signatures and declares the personal fields.
 */
function test_privacy_provider() {
    $class = '\\logstore_tsdb\\privacy\\provider';
    $interfaces = class_implements($class);
    foreach (['core_privacy\\local\\metadata\\provider', 'tool_log\\local\\privacy\\logstore_provider',
            'tool_log\\local\\privacy\\logstore_userlist_provider'] as $interface) {
        check(isset($interfaces[$interface]), "provider does not implement {$interface}");
    }
    $collection = $class::get_metadata(new \core_privacy\local\metadata\collection());
    check(count($collection->external) === 1, 'expected one external location');
    [$fields, $summary] = reset($collection->external);
    foreach (['userid', 'relateduserid', 'realuserid', 'ip', 'other', 'origin', 'timecreated'] as $field) {
        check(isset($fields[$field]), "personal field {$field} not declared");
    }
    check($summary === 'privacy:metadata:log', 'summary string');
}

/**
 * Every string the plugin uses is in the English language pack, and every string there is used.
 */
function test_language_strings() {
    $root = dirname(__DIR__);
    $string = [];
    include($root . '/lang/en/logstore_tsdb.php');
    $used = ['pluginname' => true];
    foreach (['settings.php', 'classes/privacy/provider.php', 'classes/log/store.php'] as $file) {
        $source = file_get_contents($root . '/' . $file);
        preg_match_all("/(?:get_string|lang_string)\\(\\s*'([^']+)',\\s*'logstore_tsdb'/", $source, $m);
        preg_match_all("/'(privacy:[a-z:_]+)'/", $source, $p);
        foreach (array_merge($m[1], $p[1]) as $key) {
            $used[$key] = true;
        }
    }
    $missing = array_diff(array_keys($used), array_keys($string));
    check(!$missing, 'strings missing from lang/en: ' . implode(', ', $missing));
    $unused = array_diff(array_keys($string), array_keys($used), ['pluginname_desc']);
    check(!$unused, 'strings never used: ' . implode(', ', $unused));
    $keys = array_keys($string);
    $sorted = $keys;
    sort($sorted, SORT_STRING);
    check($keys === $sorted, 'lang strings are not in alphabetical order (Moodle\'s convention)');
}

/**
 * version.php declares what the issue asks for, and every plugin file is valid PHP that starts the Moodle way.
 */
function test_version_and_lint() {
    $root = dirname(__DIR__);
    $plugin = new stdClass();
    define('MATURITY_BETA', 100);
    include($root . '/version.php');
    check($plugin->component === 'logstore_tsdb', 'component');
    check($plugin->requires === 2024100700, 'requires');
    check($plugin->supported[0] === 405 && $plugin->supported[1] >= 501, 'supported');
    $files = ['version.php', 'settings.php', 'lang/en/logstore_tsdb.php', 'classes/log/store.php',
        'classes/privacy/provider.php'];
    foreach ($files as $file) {
        exec(escapeshellarg(PHP_BINARY) . ' -l ' . escapeshellarg("{$root}/{$file}") . ' 2>&1', $out, $code);
        check($code === 0, "{$file}: " . implode(' ', $out));
        check(strpos(file_get_contents("{$root}/{$file}"), "defined('MOODLE_INTERNAL') || die();") !== false,
            "{$file} lacks the MOODLE_INTERNAL check");
    }
    $method = new ReflectionMethod('\\logstore_tsdb\\log\\store', 'write');
    check($method->getNumberOfParameters() === 1, 'write() must take exactly one parameter');
}

// ---------------------------------------------------------------------------------------------------------
// Runner.

$options = getopt('', ['filter:', 'child:']);
if (isset($options['child'])) {
    $dir = end($argv);
    try {
        call_user_func('child_' . $options['child'], $dir);
        exit(0);
    } catch (Throwable $e) {
        echo 'FAIL: ', get_class($e), ': ', $e->getMessage(), "\n";
        exit(1);
    }
}

$tests = array_filter(get_defined_functions()['user'], function ($name) {
    return strpos($name, 'test_') === 0;
});
if (isset($options['filter'])) {
    $tests = array_filter($tests, function ($name) use ($options) {
        return strpos($name, $options['filter']) !== false;
    });
}
echo 'logstore_tsdb PHP tests (', PHP_BINARY, ' ', PHP_VERSION, ")\n";
$failures = 0;
foreach ($tests as $test) {
    $GLOBALS['USER'] = (object)['id' => 2];
    $GLOBALS['PAGE'] = (object)['requestorigin' => 'web', 'requestip' => '192.0.2.10'];
    $started = microtime(true);
    try {
        $note = $test();
        printf("  ok    %-36s %7.2f s%s\n", substr($test, 5), microtime(true) - $started, $note ? "  ({$note})" : '');
    } catch (Throwable $e) {
        $failures++;
        printf("  FAIL  %-36s %s: %s\n        at %s:%d\n", substr($test, 5), get_class($e), $e->getMessage(),
            $e->getFile(), $e->getLine());
    }
}
printf("%d tests, %d passed, %d failed\n", count($tests), count($tests) - $failures, $failures);
exit($failures ? 1 : 0);
