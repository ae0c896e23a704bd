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
 * English strings for logstore_tsdb.
 *
 * @package    logstore_tsdb
 * @copyright  2025 moodle-tsdb-shipper contributors
 * @license    https://www.gnu.org/copyleft/gpl.html GNU GPL v3 or later
 */

defined('MOODLE_INTERNAL') || die();

$string['fileprefix'] = 'File name prefix';
$string['fileprefix_desc'] = 'Files are named <code>PREFIX-YYYYMMDDHH-HOST.jsonl</code>: one file per hour (UTC) and web server. Letters, digits, dot, underscore and hyphen. The shipper\'s <code>spool.pattern</code> must match these names (its default, <code>*.jsonl</code>, does).';
$string['flushevery'] = 'Write every N events';
$string['flushevery_desc'] = 'Events are kept in memory during a request and appended to the spool file at the end of the request, or earlier when this many events are waiting. Larger values mean fewer writes; long scripts (cron, CLI) keep at most this many events in memory.';
$string['hostname'] = 'Host name in file names';
$string['hostname_desc'] = 'Identifies this web server in the spool file names, so that several servers can share one spool directory. Leave empty to use the machine\'s host name. Letters, digits, dot, underscore and hyphen.';
$string['intro'] = 'This log store appends every event as one JSON line to a file in a local spool directory. The moodle-tsdb-shipper daemon, installed separately on each web server, reads the spool and ships the events to TimescaleDB. Nothing is sent over the network during the user\'s request.';
$string['logguests'] = 'Log guest access';
$string['logguests_desc'] = 'Log the actions of the guest user and of visitors who are not logged in. Command-line scripts are always logged.';
$string['pluginname'] = 'TimescaleDB spool log';
$string['pluginname_desc'] = 'Appends events as JSON lines to a local spool directory, shipped to TimescaleDB by the moodle-tsdb-shipper daemon.';
$string['privacy:metadata:log'] = 'Events are appended to files in a spool directory on the web server and shipped by the moodle-tsdb-shipper daemon to a TimescaleDB database outside Moodle. Moodle cannot read them back: exporting or deleting a user\'s events is done by the site administrator in that database (the plugin\'s README shows the queries).';
$string['privacy:metadata:log:anonymous'] = 'Whether the event was flagged as anonymous';
$string['privacy:metadata:log:contextid'] = 'The context in which the event happened';
$string['privacy:metadata:log:courseid'] = 'The course in which the event happened';
$string['privacy:metadata:log:eventname'] = 'The event name';
$string['privacy:metadata:log:ip'] = 'The IP address used at the time of the event';
$string['privacy:metadata:log:origin'] = 'The origin of the request (web, cli, ws, ...)';
$string['privacy:metadata:log:other'] = 'Additional information about the event';
$string['privacy:metadata:log:realuserid'] = 'The ID of the real user behind the event, when logged in as another user';
$string['privacy:metadata:log:relateduserid'] = 'The ID of a user related to this event';
$string['privacy:metadata:log:timecreated'] = 'The time when the event occurred';
$string['privacy:metadata:log:userid'] = 'The ID of the user who triggered this event';
$string['skipevents'] = 'Events not logged';
$string['skipevents_desc'] = 'Event class names that are not written to the spool, one per line, for example <code>\\core\\event\\course_viewed</code>. The leading backslash and letter case do not matter.';
$string['spooldir'] = 'Spool directory';
$string['spooldir_desc'] = 'Local directory the events are appended to; it must exist and be writable by the web server user, and readable by the shipper (the shipper\'s <code>spool.dir</code>). Use a local disk, not a network file system.';
