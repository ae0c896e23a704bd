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
 * Log store that appends one JSON line per event to a local spool file.
 *
 * The moodle-tsdb-shipper daemon tails the spool and ships the lines to TimescaleDB. The web request only
 * appends to a local file: no database round trip, and a failure never reaches the user.
 *
 * @package    logstore_tsdb
 * @copyright  2025 moodle-tsdb-shipper contributors
 * @license    https://www.gnu.org/copyleft/gpl.html GNU GPL v3 or later
 */

namespace logstore_tsdb\log;

defined('MOODLE_INTERNAL') || die();

/**
 * Buffered JSON-lines writer.
 *
 * Events are encoded when they are written (so that snapshots can be garbage collected), kept in a string
 * buffer, and appended to the hour's spool file every N events and at dispose(): one write() per flush, on a
 * file opened with O_APPEND and held under an exclusive flock, so that concurrent PHP workers and hosts
 * sharing a spool never interleave partial lines.
 *
 * @package    logstore_tsdb
 * @copyright  2025 moodle-tsdb-shipper contributors
 * @license    https://www.gnu.org/copyleft/gpl.html GNU GPL v3 or later
 */
class store implements \tool_log\log\writer {

    /** Flags for json_encode: one bad byte in a string must never cost the event. */
    const JSON_FLAGS = JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE | JSON_INVALID_UTF8_SUBSTITUTE;

    /** Default spool directory; the shipper's default spool.dir. */
    const DEFAULT_SPOOLDIR = '/var/spool/moodle-tsdb-shipper';

    /** Default file name prefix. */
    const DEFAULT_PREFIX = 'moodle-events';

    /** Default number of buffered events that triggers a flush. */
    const DEFAULT_FLUSHEVERY = 50;

    /** While writes fail, at most this many bytes of events are kept for retry in one request. */
    const MAX_RETAINED_BYTES = 33554432;

    /** How often a file unlinked between our open() and flock() is reopened before giving up. */
    const MAX_OPEN_ATTEMPTS = 3;

    /** @var \tool_log\log\manager $manager */
    protected $manager;

    /** @var string $spooldir directory the files are written to, without trailing slash */
    protected $spooldir;

    /** @var string $prefix file name prefix */
    protected $prefix;

    /** @var string $host host name part of the file name */
    protected $host;

    /** @var bool $logguests whether guests and not-logged-in users are logged */
    protected $logguests;

    /** @var array $skipevents lower-case event names (with leading backslash) that are not logged */
    protected $skipevents = [];

    /** @var int $flushevery flush when this many events are buffered */
    protected $flushevery;

    /** @var string $buffer encoded events, one line each, "\n"-terminated */
    protected $buffer = '';

    /** @var int $count number of events in $buffer */
    protected $count = 0;

    /** @var int $nextflushat flush when $count reaches this (pushed back after a failed flush) */
    protected $nextflushat;

    /** @var bool $reported whether a failure was already reported in this request */
    protected $reported = false;

    /** @var int $dropped events given up in this request (buffer over MAX_RETAINED_BYTES while failing) */
    protected $dropped = 0;

    /**
     * Create the store; reads the plugin settings once per request.
     *
     * @param \tool_log\log\manager $manager
     */
    public function __construct(\tool_log\log\manager $manager) {
        $this->manager = $manager;
        $config = get_config('logstore_tsdb');
        $config = is_object($config) ? $config : new \stdClass();

        $dir = isset($config->spooldir) ? trim((string)$config->spooldir) : '';
        $this->spooldir = rtrim($dir === '' ? self::DEFAULT_SPOOLDIR : $dir, '/');
        if ($this->spooldir === '') {
            $this->spooldir = '/';
        }

        $prefix = isset($config->fileprefix) ? self::clean_name_part((string)$config->fileprefix) : '';
        $this->prefix = $prefix === '' ? self::DEFAULT_PREFIX : $prefix;

        $host = isset($config->hostname) ? self::clean_name_part((string)$config->hostname) : '';
        if ($host === '') {
            $host = self::clean_name_part((string)gethostname());
        }
        $this->host = $host === '' ? 'unknown' : $host;

        // Log everything until the settings are saved for the first time, as logstore_standard does.
        $this->logguests = !isset($config->logguests) || (bool)$config->logguests;

        if (!empty($config->skipevents)) {
            foreach (preg_split('/[\s,;]+/', (string)$config->skipevents, -1, PREG_SPLIT_NO_EMPTY) as $name) {
                $this->skipevents[self::normalise_eventname($name)] = true;
            }
        }

        $flushevery = isset($config->flushevery) ? (int)$config->flushevery : self::DEFAULT_FLUSHEVERY;
        $this->flushevery = $flushevery > 0 ? $flushevery : self::DEFAULT_FLUSHEVERY;
        $this->nextflushat = $this->flushevery;
    }

    /**
     * Buffer one event; flushes when the buffer holds the configured number of events.
     *
     * Never throws: a logging problem must not break the user's request.
     *
     * @param \core\event\base $event
     * @return void
     */
    public function write(\core\event\base $event) {
        global $PAGE, $USER;

        try {
            if ($this->is_event_ignored($event)) {
                return;
            }

            $entry = $event->get_data();
            // Taken the way tool_log's buffered_writer takes them.
            $entry['origin'] = isset($PAGE) ? $PAGE->requestorigin : null;
            $entry['ip'] = isset($PAGE) ? $PAGE->requestip : null;
            $entry['realuserid'] = null;
            if (\core\session\manager::is_loggedinas()) {
                $real = isset($USER->realuser) ? $USER->realuser : \core\session\manager::get_realuser()->id;
                $entry['realuserid'] = (int)$real;
            }
            $entry['timecreated_us'] = self::timecreated_us($entry['timecreated'] ?? null);

            $this->buffer .= self::encode($entry) . "\n";
            $this->count++;

            if ($this->count >= $this->nextflushat) {
                $this->flush();
            }
        } catch (\Throwable $e) {
            $this->report_failure('event not logged: ' . get_class($e) . ': ' . $e->getMessage());
        }
    }

    /**
     * Append the buffered events to the spool.
     *
     * On failure the events stay buffered for the next flush in this request, and the failure is reported
     * once per request with debugging() and error_log().
     *
     * @return bool true when the buffer is empty afterwards
     */
    public function flush() {
        if ($this->count === 0) {
            return true;
        }
        try {
            $error = $this->append();
        } catch (\Throwable $e) {
            $error = get_class($e) . ': ' . $e->getMessage();
        }
        if ($error === null) {
            $this->nextflushat = $this->flushevery;
            return true;
        }

        $this->report_failure($error);
        // Try again after another N events, not on every event: a full disk must not turn each write()
        // into an open() plus a failed write of an ever-growing buffer.
        $this->nextflushat = $this->count + $this->flushevery;
        if (strlen($this->buffer) > self::MAX_RETAINED_BYTES) {
            $this->dropped += $this->count;
            $this->buffer = '';
            $this->count = 0;
            $this->nextflushat = $this->flushevery;
        }
        return false;
    }

    /**
     * Flush what is left; called by the log manager at the end of the request.
     *
     * @return void
     */
    public function dispose() {
        $this->flush();
        $lost = $this->dropped + $this->count;
        if ($lost > 0) {
            // The one place where events are given up: say how many, so that nothing is lost silently.
            error_log("logstore_tsdb: {$lost} event(s) could not be written to the spool in this request "
                . "and are lost (see the previous logstore_tsdb message)");
            $this->dropped = 0;
            $this->buffer = '';
            $this->count = 0;
        }
    }

    /**
     * Path of the file the next flush appends to: one file per UTC hour and host.
     *
     * @param int|null $now unix time, default now
     * @return string
     */
    public function get_spool_path($now = null) {
        $hour = gmdate('YmdH', $now === null ? time() : $now);
        return $this->spooldir . '/' . $this->prefix . '-' . $hour . '-' . $this->host . '.jsonl';
    }

    /**
     * Number of events buffered and not yet written.
     *
     * @return int
     */
    public function get_buffered_count() {
        return $this->count;
    }

    /**
     * Should the event be ignored (not logged)?
     *
     * @param \core\event\base $event
     * @return bool
     */
    protected function is_event_ignored(\core\event\base $event) {
        if ($this->skipevents && isset($this->skipevents[self::normalise_eventname($event->eventname)])) {
            return true;
        }
        $cli = defined('CLI_SCRIPT') && CLI_SCRIPT;
        $phpunit = defined('PHPUNIT_TEST') && PHPUNIT_TEST;
        if ((!$cli || $phpunit) && !$this->logguests) {
            // As in logstore_standard: CLI scripts are always logged because nobody logs in there.
            if (!isloggedin() || isguestuser()) {
                return true;
            }
        }
        return false;
    }

    /**
     * Append the whole buffer with one write() under an exclusive lock.
     *
     * A short write (disk full, quota) is cut back to the last complete line, so no half line stays in the
     * file; complete lines that did get written leave the buffer, the rest stays for the next flush.
     *
     * @return string|null null on success, else what went wrong
     */
    protected function append() {
        $path = $this->get_spool_path();
        error_clear_last();
        for ($attempt = 1; $attempt <= self::MAX_OPEN_ATTEMPTS; $attempt++) {
            // Mode a+: O_APPEND|O_CREAT, and readable for the last-byte check below.
            $fh = @fopen($path, 'a+b');
            if ($fh === false) {
                return "cannot open {$path}: " . self::last_php_error();
            }
            try {
                if (!flock($fh, LOCK_EX)) {
                    return "cannot lock {$path}: " . self::last_php_error();
                }
                $stat = fstat($fh);
                if ($stat === false) {
                    return "cannot stat {$path}: " . self::last_php_error();
                }
                if ($stat['nlink'] === 0) {
                    // Spool housekeeping removed the file between our open and our lock: lines written now
                    // would be lost with the unlinked inode. Open the path again (it is created anew).
                    continue;
                }
                return $this->append_locked($fh, $path, (int)$stat['size']);
            } finally {
                // Closing the descriptor releases the lock.
                fclose($fh);
            }
        }
        return "{$path} was removed while being opened, " . self::MAX_OPEN_ATTEMPTS . ' times in a row';
    }

    /**
     * Write the buffer to an open, locked spool file.
     *
     * @param resource $fh file opened a+b and locked LOCK_EX
     * @param string $path its path, for messages
     * @param int $size its size under the lock
     * @return string|null null on success, else what went wrong
     */
    protected function append_locked($fh, $path, $size) {
        $lead = '';
        if ($size > 0 && fseek($fh, $size - 1) === 0 && fread($fh, 1) !== "\n") {
            // A writer died in the middle of a line (or could not cut back a short write): end that line
            // so it cannot swallow our first event. The shipper dead-letters the broken line, raw bytes kept.
            $lead = "\n";
        }
        $payload = $lead . $this->buffer;
        $length = strlen($payload);
        $written = @fwrite($fh, $payload);
        if ($written === $length) {
            $this->buffer = '';
            $this->count = 0;
            return null;
        }

        $written = $written === false ? 0 : $written;
        $error = "short write to {$path}: {$written} of {$length} bytes: " . self::last_php_error();
        // Keep the complete lines that made it, cut the partial one off.
        $done = max(0, $written - strlen($lead));
        $cut = $done > 0 ? strrpos(substr($this->buffer, 0, $done), "\n") : false;
        $keep = $cut === false ? 0 : $cut + 1;
        $keepfile = $size + ($written >= strlen($lead) ? strlen($lead) : 0) + $keep;
        if ($written > 0 && !ftruncate($fh, $keepfile)) {
            $error .= "; could not cut the partial line off at byte {$keepfile}";
        }
        if ($keep > 0) {
            // JSON never contains a raw newline, so each "\n" ends exactly one event.
            $this->count -= substr_count($this->buffer, "\n", 0, $keep);
            $this->buffer = (string)substr($this->buffer, $keep);
        }
        return $error;
    }

    /**
     * Report a failure once per request, without throwing.
     *
     * @param string $message
     * @return void
     */
    protected function report_failure($message) {
        if ($this->reported) {
            return;
        }
        $this->reported = true;
        $message = "logstore_tsdb: {$message} ({$this->count} event(s) kept in memory for a retry in this request;"
            . ' further failures in this request are not reported)';
        try {
            error_log($message);
            debugging($message, DEBUG_NORMAL);
        } catch (\Throwable $e) {
            // Reporting must never break the request either.
            unset($e);
        }
    }

    /**
     * JSON-encode one entry; values json_encode cannot represent (INF, NAN, ...) become null, never the event.
     *
     * @param array $entry
     * @return string
     */
    protected static function encode(array $entry) {
        $json = json_encode($entry, self::JSON_FLAGS);
        if ($json === false) {
            $json = json_encode($entry, self::JSON_FLAGS | JSON_PARTIAL_OUTPUT_ON_ERROR);
        }
        if ($json === false) {
            $entry['other'] = null;
            $json = json_encode($entry, self::JSON_FLAGS | JSON_PARTIAL_OUTPUT_ON_ERROR);
        }
        return (string)$json;
    }

    /**
     * Microseconds since the epoch, kept within the event's own second.
     *
     * The clock is read at write() time, a moment after the event was created; if a second boundary falls
     * in between, the value is clamped to the event's second so that `timecreated_us` and `timecreated` never
     * disagree on the second.
     *
     * @param mixed $timecreated the event's timecreated
     * @return int
     */
    protected static function timecreated_us($timecreated) {
        [$usec, $sec] = explode(' ', microtime());
        $now = (int)$sec * 1000000 + (int)round((float)$usec * 1000000);
        if (!is_numeric($timecreated)) {
            return $now;
        }
        $low = (int)$timecreated * 1000000;
        return max($low, min($low + 999999, $now));
    }

    /**
     * Reduce a setting to characters safe in a file name.
     *
     * @param string $value
     * @return string
     */
    protected static function clean_name_part($value) {
        return trim((string)preg_replace('/[^A-Za-z0-9._-]+/', '_', trim($value)), '._');
    }

    /**
     * Canonical form of an event name for the skip list: leading backslash, lower case.
     *
     * @param string $name
     * @return string
     */
    protected static function normalise_eventname($name) {
        return '\\' . strtolower(ltrim(trim((string)$name), '\\'));
    }

    /**
     * The last PHP warning's message, for error reports.
     *
     * @return string
     */
    protected static function last_php_error() {
        $error = error_get_last();
        return $error ? $error['message'] : 'unknown error';
    }
}
