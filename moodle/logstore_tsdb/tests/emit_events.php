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
 * Write N events with known content to a spool directory through the real store (php-cli, no Moodle).
 *
 * Usage:
 *   php emit_events.php SPOOLDIR COUNT [--worker=W] [--flush-every=N] [--host=NAME] [--prefix=P]
 *                       [--start-at=UNIXTIME]
 *
 * Event number i (0 <= i < COUNT) of worker W has objectid W*1000000+i and `other` containing
 * "emit": "W:i" (for i % 10 == 9, `other` is the string "W:i"). The content cycles with i % 10:
 * 0 plain, 1 anonymous, 2 'login as' (realuserid 2), 3 unicode, 4 invalid UTF-8 (becomes U+FFFD),
 * 5 origin cli with no ip, 6 IPv6, 7 nested other, 8 ids as numeric strings, 9 other is a JSON string.
 * See harness_emitted_event() in harness.php.
 *
 * The lines land in SPOOLDIR/P-YYYYMMDDHH-NAME.jsonl (defaults: prefix moodle-events, host "emit").
 * Prints one JSON object on stdout: {"written": COUNT, "worker": W, "files": [...]}. Exit 0 on success.
 * --start-at makes concurrent emitters start together (the concurrency test uses it).
 *
 * @package    logstore_tsdb
 * @copyright  2025 moodle-tsdb-shipper contributors
 * @license    https://www.gnu.org/copyleft/gpl.html GNU GPL v3 or later
 */

require_once(__DIR__ . '/harness.php');

$args = array_slice($argv, 1);
$positional = [];
$options = ['worker' => '0', 'flush-every' => '50', 'host' => 'emit', 'prefix' => 'moodle-events', 'start-at' => ''];
foreach ($args as $arg) {
    if (preg_match('/^--([a-z-]+)=(.*)$/', $arg, $m) && array_key_exists($m[1], $options)) {
        $options[$m[1]] = $m[2];
    } else if (strpos($arg, '--') === 0) {
        fwrite(STDERR, "unknown option {$arg}\n");
        exit(2);
    } else {
        $positional[] = $arg;
    }
}
if (count($positional) !== 2 || !ctype_digit($positional[1])) {
    fwrite(STDERR, "usage: php emit_events.php SPOOLDIR COUNT [--worker=W] [--flush-every=N] [--host=NAME]"
        . " [--prefix=P] [--start-at=UNIXTIME]\n");
    exit(2);
}
[$spooldir, $count] = [$positional[0], (int)$positional[1]];
$worker = (int)$options['worker'];

$store = harness_store([
    'spooldir' => $spooldir,
    'fileprefix' => $options['prefix'],
    'hostname' => $options['host'],
    'flushevery' => (int)$options['flush-every'],
]);

if ($options['start-at'] !== '') {
    $wait = (float)$options['start-at'] - microtime(true);
    if ($wait > 0) {
        usleep((int)($wait * 1000000));
    }
}

$files = [$store->get_spool_path()];
for ($i = 0; $i < $count; $i++) {
    $store->write(harness_emitted_event($worker, $i));
}
$files[] = $store->get_spool_path();
$store->dispose();

if ($GLOBALS['HARNESS_DEBUGGING']) {
    fwrite(STDERR, implode("\n", $GLOBALS['HARNESS_DEBUGGING']) . "\n");
    exit(1);
}
echo json_encode(['written' => $count, 'worker' => $worker, 'files' => array_values(array_unique($files))],
    JSON_UNESCAPED_SLASHES), "\n";
